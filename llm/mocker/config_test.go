package mocker

import (
	"testing"
	"time"
)

// TestConfigDefaultsAreTheDocumented holds the defaults docs/llm.md's
// "Mock workers" gives.
func TestConfigDefaultsAreTheDocumented(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxBatch != 32 || c.PrefillPerToken != 20*time.Microsecond || c.DecodeStep != 5*time.Millisecond ||
		c.KvBlocks != 8192 || c.BlockSize != 16 || c.ContextLength != 8192 || c.RemotePrefillMin != 512 ||
		c.MetricsMinInterval != 20*time.Millisecond || c.MetricsInterval != time.Second || c.Model != "mock-model" {
		t.Errorf("defaults %+v differ from docs/llm.md's", c)
	}
}
