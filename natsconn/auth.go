package natsconn

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/config"
)

// ErrAuthConflict is wrapped by Connect's error when more than one auth mode
// is configured.
var ErrAuthConflict = errors.New("natsconn: more than one NATS auth mode is set")

// auth is the auth mode Connect chose, described for error messages.
type auth struct {
	mode string      // "user/password", "token", "nkey", "credentials", "url", "url token", "none"
	who  string      // what the server refused: `user "bob"`, `token auth`...
	hint string      // what to check when it is refused
	opt  nats.Option // nil for none
}

// authFor picks the auth mode from the fields set, as Dynamo picks it from
// the NATS_AUTH_* variables, and checks its inputs before any dialing.
// urlSource is where the URLs came from (WithURLSource).
func authFor(cfg config.NATS, urls []*url.URL, urlSource string) (auth, error) {
	var set []string
	if cfg.User != "" || cfg.Password != "" {
		set = append(set, "user/password (nats.user, nats.password; NATS_AUTH_USERNAME, NATS_AUTH_PASSWORD)")
	}
	if cfg.Token != "" {
		set = append(set, "token (nats.token; NATS_AUTH_TOKEN)")
	}
	if cfg.NKey != "" {
		set = append(set, "NKey (nats.nkey; NATS_AUTH_NKEY)")
	}
	if cfg.CredentialsFile != "" {
		set = append(set, "credentials file (nats.credentials_file; NATS_AUTH_CREDENTIALS_FILE)")
	}
	// nats.go sends a URL's user info in place of any other credential.
	for _, u := range urls {
		if u.User != nil {
			set = append(set, "user info in nats.url (NATS_SERVER)")
			break
		}
	}
	if len(set) > 1 {
		return auth{}, fmt.Errorf("%w: %s; set only one", ErrAuthConflict, strings.Join(set, " and "))
	}

	switch {
	case cfg.User != "" || cfg.Password != "":
		if cfg.User == "" {
			return auth{}, errors.New("natsconn: nats.password (NATS_AUTH_PASSWORD) is set but nats.user (NATS_AUTH_USERNAME) is empty")
		}
		return auth{
			mode: "user/password",
			who:  fmt.Sprintf("user %q", cfg.User),
			hint: "check NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD",
			opt:  nats.UserInfo(cfg.User, cfg.Password),
		}, nil
	case cfg.Token != "":
		return auth{
			mode: "token",
			who:  "token auth",
			hint: "check NATS_AUTH_TOKEN",
			opt:  nats.Token(cfg.Token),
		}, nil
	case cfg.NKey != "":
		return nkeyAuth(cfg.NKey)
	case cfg.CredentialsFile != "":
		return credsAuth(cfg.CredentialsFile)
	}

	for _, u := range urls {
		if u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); !ok {
			// nats.go sends user info without a password as a token.
			return auth{
				mode: "url token",
				who:  "the token from the URL",
				hint: "check the token in " + urlHint(urlSource),
			}, nil
		}
		return auth{
			mode: "url",
			who:  fmt.Sprintf("user %q from the URL", u.User.Username()),
			hint: "check the user info in " + urlHint(urlSource),
		}, nil
	}
	return auth{
		mode: "none",
		who:  "a connection without credentials",
		hint: "the server wants credentials: set NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD, NATS_AUTH_TOKEN, NATS_AUTH_NKEY or NATS_AUTH_CREDENTIALS_FILE",
	}, nil
}

// seedLike matches what may be an NKey seed, which errors must not show.
var seedLike = regexp.MustCompile(`S[A-Z2-7]{40,}`)

// nkeyAuth takes a user seed, or the path of a file holding one.
func nkeyAuth(v string) (auth, error) {
	const field = "nats.nkey (NATS_AUTH_NKEY)"
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(v)))
	if err != nil {
		// Never echo what may be a mistyped seed; a path is fine to show.
		if strings.HasPrefix(v, "S") && !strings.ContainsAny(v, `/\.`) {
			return auth{}, fmt.Errorf("natsconn: %s is not a valid NKey seed: %w (want a user seed, SU..., or the path of a file holding one)", field, err)
		}
		data, rerr := os.ReadFile(v)
		if rerr != nil && nkeys.IsValidPublicKey(strings.TrimSpace(v)) {
			return auth{}, fmt.Errorf("natsconn: %s holds a public key (%.1s...); want the user's seed (SU...), whose public key the server lists", field, strings.TrimSpace(v))
		}
		if rerr != nil && seedLike.MatchString(v) {
			// Not a path: a seed with something around it. The file
			// error would show the seed.
			if _, qerr := nkeys.FromSeed([]byte(strings.Trim(v, " \t\r\n\"'`"))); qerr == nil {
				return auth{}, fmt.Errorf("natsconn: %s is not a valid NKey seed: it holds one inside quotes; remove them", field)
			}
			return auth{}, fmt.Errorf("natsconn: %s is not a valid NKey seed: it holds what looks like one among other characters (want a user seed, SU..., alone, or the path of a file holding one)", field)
		}
		if rerr != nil {
			return auth{}, fmt.Errorf("natsconn: %s is neither an NKey seed nor a readable file: %w", field, rerr)
		}
		kp, err = nkeys.ParseDecoratedNKey(data)
		if err != nil {
			return auth{}, fmt.Errorf("natsconn: NKey file %s from %s holds no valid NKey seed: %w", v, field, err)
		}
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return auth{}, fmt.Errorf("natsconn: %s: %w", field, err)
	}
	if !strings.HasPrefix(pub, "U") {
		return auth{}, fmt.Errorf("natsconn: %s holds the seed of a non-user key (its public key starts with %q); want a user seed (SU...)", field, pub[:1])
	}
	return auth{
		mode: "nkey",
		who:  "NKey " + pub,
		hint: "check NATS_AUTH_NKEY: is this public key among the server's nkey users?",
		opt:  nats.Nkey(pub, kp.Sign),
	}, nil
}

// credsAuth checks the .creds file now, for an error that names it; nats.go
// reads it again at every (re)connect, so a rotated file is picked up.
func credsAuth(path string) (auth, error) {
	const field = "nats.credentials_file (NATS_AUTH_CREDENTIALS_FILE)"
	data, err := os.ReadFile(path)
	if err != nil {
		return auth{}, fmt.Errorf("natsconn: credentials file from %s: %w", field, err)
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return auth{}, fmt.Errorf("natsconn: credentials file %s from %s: %w", path, field, err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return auth{}, fmt.Errorf("natsconn: credentials file %s from %s holds no valid user JWT: %w", path, field, err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(data)
	if err != nil {
		return auth{}, fmt.Errorf("natsconn: credentials file %s from %s holds no user NKey seed: %w", path, field, err)
	}
	kp.Wipe()
	user := claims.Name
	if user == "" {
		user = claims.Subject
	}
	return auth{
		mode: "credentials",
		who:  fmt.Sprintf("credentials file %s (user %s)", path, user),
		hint: "check NATS_AUTH_CREDENTIALS_FILE: is the user's account known to the server, and the JWT unexpired?",
		opt:  nats.UserCredentials(path),
	}, nil
}
