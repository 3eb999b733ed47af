package config

import (
	"strings"
	"testing"
)

const (
	testCAPEM  = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	testKeyPEM = "-----BEGIN EC PRIVATE KEY-----\nsecretkeybytes\n-----END EC PRIVATE KEY-----\n"
)

// TestEtcdAuthAndTLSComeFromDynamosVariables: Dynamo's etcd client reads
// ETCD_AUTH_*; Load takes them for the etcd backend's keys, a CA as a
// file name or as PEM text, and `loom config` shows neither the password,
// nor the key, nor PEM text.
func TestEtcdAuthAndTLSComeFromDynamosVariables(t *testing.T) {
	l, err := Load(WithDirs(), mapEnv(map[string]string{
		"LOOM_DISCOVERY":        "etcd",
		"ETCD_ENDPOINTS":        "https://e1:2379,https://e2:2379",
		"ETCD_AUTH_USERNAME":    "loom",
		"ETCD_AUTH_PASSWORD":    "hunter2",
		"ETCD_AUTH_CA":          testCAPEM,
		"ETCD_AUTH_CLIENT_CERT": "/certs/client.pem",
		"ETCD_AUTH_CLIENT_KEY":  testKeyPEM,
	}))
	if err != nil {
		t.Fatal(err)
	}
	d := l.Config.Discovery
	if d.EtcdUsername != "loom" || d.EtcdPassword != "hunter2" || d.EtcdTLSCAFile != testCAPEM ||
		d.EtcdTLSCertFile != "/certs/client.pem" || d.EtcdTLSKeyFile != testKeyPEM {
		t.Errorf("Discovery = %+v", d)
	}
	got := map[string]Setting{}
	for _, s := range l.Settings() {
		got[s.Key] = s
	}
	for _, want := range []Setting{
		{"discovery.etcd_username", "loom", "env ETCD_AUTH_USERNAME"},
		{"discovery.etcd_password", Mask, "env ETCD_AUTH_PASSWORD"},
		{"discovery.etcd_tls_ca_file", PEMText, "env ETCD_AUTH_CA"},
		{"discovery.etcd_tls_cert_file", "/certs/client.pem", "env ETCD_AUTH_CLIENT_CERT"},
		{"discovery.etcd_tls_key_file", Mask, "env ETCD_AUTH_CLIENT_KEY"},
	} {
		if got[want.Key] != want {
			t.Errorf("got %+v, want %+v", got[want.Key], want)
		}
	}
	table := l.Table()
	for _, secret := range []string{"hunter2", "secretkeybytes", "BEGIN"} {
		if strings.Contains(table, secret) {
			t.Errorf("Table shows %q:\n%s", secret, table)
		}
	}
}

func TestEtcdAuthAndTLSKeysAreCheckedTogether(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
		want []string // in the error; none: no error
	}{
		{name: "a password without a user names both keys",
			env:  map[string]string{"ETCD_AUTH_PASSWORD": "hunter2"},
			want: []string{"discovery.etcd_password", "without discovery.etcd_username (ETCD_AUTH_USERNAME)"}},
		{name: "a user without a password names both keys",
			env:  map[string]string{"ETCD_AUTH_USERNAME": "loom"},
			want: []string{"discovery.etcd_username", "without discovery.etcd_password (ETCD_AUTH_PASSWORD)"}},
		{name: "a certificate without its key names both keys",
			env:  map[string]string{"ETCD_ENDPOINTS": "https://e1:2379", "ETCD_AUTH_CLIENT_CERT": "/certs/client.pem"},
			want: []string{"discovery.etcd_tls_cert_file = \"/certs/client.pem\"", "without discovery.etcd_tls_key_file (ETCD_AUTH_CLIENT_KEY)"}},
		{name: "a key without its certificate names both keys and does not show the key",
			env:  map[string]string{"ETCD_ENDPOINTS": "https://e1:2379", "ETCD_AUTH_CLIENT_KEY": testKeyPEM},
			want: []string{"discovery.etcd_tls_key_file = \"****\"", "without discovery.etcd_tls_cert_file (ETCD_AUTH_CLIENT_CERT)"}},
		{name: "a CA with http:// endpoints names them",
			env:  map[string]string{"ETCD_ENDPOINTS": "http://e1:2379,https://e2:2379", "ETCD_AUTH_CA": testCAPEM},
			want: []string{"discovery.etcd_endpoints", "discovery.etcd_tls_ca_file set", "no TLS with http:// endpoints (http://e1:2379)", "write them https://"}},
		{name: "a client certificate with http:// endpoints names them",
			env:  map[string]string{"ETCD_AUTH_CLIENT_CERT": "/c.pem", "ETCD_AUTH_CLIENT_KEY": "/k.pem"},
			want: []string{"discovery.etcd_tls_cert_file set", "(http://127.0.0.1:2379)"}},
		{name: "http:// and https:// endpoints together are refused",
			env:  map[string]string{"ETCD_ENDPOINTS": "https://e1:2379,http://e2:2379"},
			want: []string{"discovery.etcd_endpoints", "mixes http:// and https://"}},
		{name: "https:// without a CA is accepted: the system's CAs verify etcd",
			env: map[string]string{"ETCD_ENDPOINTS": "https://e1:2379", "ETCD_AUTH_USERNAME": "loom", "ETCD_AUTH_PASSWORD": "pw"}},
		{name: "user/password over http:// is accepted, as etcd accepts it",
			env: map[string]string{"ETCD_AUTH_USERNAME": "loom", "ETCD_AUTH_PASSWORD": "pw"}},
		{name: "endpoints without a scheme take TLS",
			env: map[string]string{"ETCD_ENDPOINTS": "e1:2379", "ETCD_AUTH_CA": "/ca.pem"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["LOOM_DISCOVERY"] = "etcd"
			_, err := Load(WithDirs(), mapEnv(tt.env))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, secret := range []string{"hunter2", "secretkeybytes"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error shows %q: %q", secret, err)
				}
			}
		})
	}
	t.Run("other backends do not read them, so they are not checked", func(t *testing.T) {
		if _, err := Load(WithDirs(), mapEnv(map[string]string{"ETCD_AUTH_PASSWORD": "hunter2", "ETCD_AUTH_CA": testCAPEM})); err != nil {
			t.Fatalf("Load with the memory backend: %v", err)
		}
	})
	t.Run("Validate checks them too", func(t *testing.T) {
		c := Default()
		c.Discovery.Backend, c.Discovery.EtcdTLSCertFile = "etcd", "/c.pem"
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "without discovery.etcd_tls_key_file") {
			t.Errorf("Validate = %v", err)
		}
	})
}
