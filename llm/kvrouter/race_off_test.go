//go:build !race

package kvrouter

const raceEnabled = false
