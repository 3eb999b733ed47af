package jsstream

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestCoversFollowsNATSWildcards(t *testing.T) {
	for _, c := range []struct {
		subjects []string
		subject  string
		want     bool
	}{
		{[]string{"q.*"}, "q.queue", true},
		{[]string{"q.*"}, "q.a.b", false},
		{[]string{"q.>"}, "q.a.b", true},
		{[]string{"q.>"}, "q", false},
		{[]string{"x.*", "q.queue"}, "q.queue", true},
		{[]string{"elsewhere.*"}, "q.queue", false},
	} {
		if got := Covers(c.subjects, c.subject); got != c.want {
			t.Errorf("Covers(%v, %s) = %v, want %v", c.subjects, c.subject, got, c.want)
		}
	}
}

func TestCompareNamesLimitsAndIgnoresLabels(t *testing.T) {
	want := jetstream.StreamConfig{Subjects: []string{"a"}, MaxMsgs: -1, MaxAge: time.Hour, Description: "mine", Metadata: map[string]string{"k": "v"}}
	have := want
	have.Description, have.Metadata = "theirs", nil
	if d := Compare(have, want); len(d) != 0 {
		t.Fatalf("labels compared: %v", d)
	}
	have.MaxMsgs, have.MaxAge, have.Retention = 1000, 0, jetstream.InterestPolicy
	d := Compare(have, want)
	if len(d) != 3 || d[0].String() != "retention Interest (configured Limits)" || d[1].String() != "max_msgs 1000 (configured unlimited)" || d[2].String() != "max_age 0s (configured 1h0m0s)" {
		t.Fatalf("differences %v", d)
	}
}
