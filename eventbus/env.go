package eventbus

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/config"
)

// The environment variables of Coze Studio's NATS EventBus (seed 002).
const (
	EnvServerURL      = "NATS_SERVER_URL"      // one URL or several, comma-separated; nats:// or tls://
	EnvJWTToken       = "NATS_JWT_TOKEN"       // a user JWT, with NATS_NKEY_SEED
	EnvNKeySeed       = "NATS_NKEY_SEED"       // an NKey seed, or the path of a file holding one
	EnvUsername       = "NATS_USERNAME"        // user/password auth
	EnvPassword       = "NATS_PASSWORD"        // user/password auth
	EnvToken          = "NATS_TOKEN"           // token auth
	EnvStreamReplicas = "NATS_STREAM_REPLICAS" // replicas of JetStream streams (default 1)
	EnvUseJetStream   = "NATS_USE_JETSTREAM"   // "true": JetStream consumers (default false)
)

// ConfigFromEnv returns the configuration of a Bus: base's NATS and queue
// settings (Loom's loaded configuration, or config.Default()), with Coze
// Studio's environment variables, where set, taking precedence. The auth
// variables replace base's auth entirely; setting two auth modes (say
// NATS_TOKEN and NATS_USERNAME) is an error naming both.
func ConfigFromEnv(base config.Config) (Config, error) {
	return configFromEnv(base, os.LookupEnv)
}

func configFromEnv(base config.Config, lookup func(string) (string, bool)) (Config, error) {
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	cfg := Config{NATS: base.NATS, Queue: base.Queue}
	if v := get(EnvServerURL); v != "" {
		cfg.NATS.URL, cfg.urlSource = v, "env "+EnvServerURL
	}
	jwt, seed := get(EnvJWTToken), get(EnvNKeySeed)
	user, pass, token := get(EnvUsername), get(EnvPassword), get(EnvToken)
	var modes []string
	if jwt != "" {
		modes = append(modes, EnvJWTToken+" with "+EnvNKeySeed)
	} else if seed != "" {
		modes = append(modes, EnvNKeySeed)
	}
	if user != "" || pass != "" {
		modes = append(modes, EnvUsername+" and "+EnvPassword)
	}
	if token != "" {
		modes = append(modes, EnvToken)
	}
	if len(modes) > 1 {
		return Config{}, fmt.Errorf("eventbus: more than one NATS auth mode is set: %s; set only one", strings.Join(modes, ", "))
	}
	if len(modes) == 1 {
		n := &cfg.NATS
		n.User, n.Password, n.Token, n.NKey, n.CredentialsFile = "", "", "", "", ""
		switch {
		case jwt != "":
			if seed == "" {
				return Config{}, fmt.Errorf("eventbus: %s is set but %s is empty; JWT auth needs the user's NKey seed", EnvJWTToken, EnvNKeySeed)
			}
			cfg.JWT, cfg.Seed = jwt, seed
		case seed != "":
			n.NKey = seed
		case user != "" || pass != "":
			if user == "" {
				return Config{}, fmt.Errorf("eventbus: %s is set but %s is empty", EnvPassword, EnvUsername)
			}
			n.User, n.Password = user, pass
		default:
			n.Token = token
		}
	}
	if v := get(EnvStreamReplicas); v != "" {
		r, err := strconv.Atoi(v)
		if err != nil || r < 1 || r > 5 {
			return Config{}, fmt.Errorf("eventbus: %s=%q: want a number of replicas from 1 to 5", EnvStreamReplicas, v)
		}
		cfg.Queue.Replicas = r
	}
	if v := get(EnvUseJetStream); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return Config{}, fmt.Errorf("eventbus: %s=%q: want true or false", EnvUseJetStream, v)
		}
		cfg.Queue.EventBusJetStream = on
	}
	return cfg, nil
}

// seedOf returns an NKey seed given as itself or as the path of a file
// holding it (Coze Studio documents NATS_NKEY_SEED as a seed file).
func seedOf(v string) (string, error) {
	if _, err := nkeys.FromSeed([]byte(v)); err == nil {
		return v, nil
	}
	data, err := os.ReadFile(v)
	if err != nil {
		return "", fmt.Errorf("eventbus: %s is neither an NKey seed nor a readable file: %w", EnvNKeySeed, err)
	}
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		return "", fmt.Errorf("eventbus: the file named by %s holds no NKey seed: %w", EnvNKeySeed, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return "", fmt.Errorf("eventbus: the file named by %s holds no NKey seed: %w", EnvNKeySeed, err)
	}
	return string(seed), nil
}
