package config_test

import (
	"fmt"

	"github.com/loomrt/loom/config"
)

func ExampleLoad() {
	// A process's environment; Load reads os.LookupEnv unless told otherwise.
	env := map[string]string{
		"NATS_AUTH_TOKEN": "s3cret",
		"LOOM_LOG_LEVEL":  "debug",
	}
	loaded, err := config.Load(
		config.WithDirs("testdata/etc"), // instead of /opt/loom/defaults and /opt/loom/etc
		config.WithEnv(func(name string) (string, bool) {
			v, ok := env[name]
			return v, ok
		}),
		config.WithValue("shutdown.timeout", "1m"),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(loaded.Config.Discovery.Backend, loaded.Config.Discovery.EtcdEndpoints)
	for _, s := range loaded.Settings() {
		switch s.Key {
		case "nats.url", "nats.token", "nats.connect_timeout", "log.level", "log.format", "shutdown.timeout":
			fmt.Printf("%-22s %-26s %s\n", s.Key, s.Value, s.Source)
		}
	}
	// Output:
	// etcd [http://etcd-0:2379 http://etcd-1:2379]
	// nats.url               nats://nats.internal:4222  testdata/etc/10-nats.toml
	// nats.token             ****                       env NATS_AUTH_TOKEN
	// nats.connect_timeout   10s                        testdata/etc/10-nats.toml
	// shutdown.timeout       1m0s                       code
	// log.level              debug                      env LOOM_LOG_LEVEL
	// log.format             text                       default
}

func ExampleConfig_Validate() {
	c := config.Default()
	c.Log.Level = "verbose"
	c.Shutdown.Timeout = -1
	fmt.Println(c.Validate())
	// Output:
	// config: shutdown.timeout = "-1ns": must be at least 0s
	// config: log.level = "verbose": not one of debug, info, warn, error
}
