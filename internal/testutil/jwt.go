package testutil

import (
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/embedded"
)

// JWTUser is a user of a decentralized-auth NATS trust chain made by
// NewJWTUser: the operator and account for the server, the user's JWT and
// its seed for a client.
type JWTUser struct {
	Operator *embedded.NATSOperator // for NATSOptions.Operator
	JWT      string
	Seed     []byte
}

// NewJWTUser makes an operator, one account it signs (without a system
// account) and one user of that account.
func NewJWTUser(t testing.TB) JWTUser {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	opJWT, err := jwt.NewOperatorClaims(opub).Encode(okp)
	must(err)
	akp, err := nkeys.CreateAccount()
	must(err)
	apub, err := akp.PublicKey()
	must(err)
	accJWT, err := jwt.NewAccountClaims(apub).Encode(okp)
	must(err)
	ukp, err := nkeys.CreateUser()
	must(err)
	upub, err := ukp.PublicKey()
	must(err)
	userJWT, err := jwt.NewUserClaims(upub).Encode(akp)
	must(err)
	seed, err := ukp.Seed()
	must(err)
	return JWTUser{Operator: &embedded.NATSOperator{JWT: opJWT, Accounts: []string{accJWT}}, JWT: userJWT, Seed: seed}
}
