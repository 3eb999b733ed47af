package loom_test

// The root package links only the memory backend; its tests exercise the
// others through configuration too.
import _ "github.com/loomrt/loom/discovery/all"
