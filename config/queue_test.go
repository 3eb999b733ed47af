package config

import (
	"testing"
	"time"
)

func TestQueueWithDefaultsFillsZeroFieldsOnly(t *testing.T) {
	def := Default().Queue
	got := Queue{AckWait: 3 * time.Second, Replicas: 3, BackoffInitial: 2 * time.Minute}.WithDefaults()
	want := def
	want.AckWait, want.Replicas = 3*time.Second, 3
	want.BackoffInitial, want.BackoffMax = 2*time.Minute, 2*time.Minute // raised to backoff_initial
	want.HandlerTimeout = 3 * time.Second                               // zero: ack_wait
	want.DeadLetterMaxAge, want.EventBusMaxAge = 0, 0                   // zero: no limit
	if got != want {
		t.Fatalf("WithDefaults:\n got %+v\nwant %+v", got, want)
	}
	if d := def.WithDefaults(); d != def {
		t.Fatalf("the defaults changed by WithDefaults:\n got %+v\nwant %+v", d, def)
	}
}

func TestQueueOrTakesEveryZeroFieldFromTheOther(t *testing.T) {
	rt := Default().Queue
	rt.Storage, rt.DeadLetterMaxAge, rt.EventBusJetStream = "memory", time.Hour, true
	got := Queue{AckWait: time.Second, Codec: "json"}.Or(rt)
	want := rt
	want.AckWait, want.Codec = time.Second, "json"
	if got != want {
		t.Fatalf("Or:\n got %+v\nwant %+v", got, want)
	}
}
