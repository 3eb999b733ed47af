package loom

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
)

// Picker chooses the instance for one request among candidates (never
// empty, sorted by id). Built-in pickers are RoundRobin, Random,
// PowerOfTwo and LeastLoaded; a program can supply its own, for example to
// route by a key in the request's context.
type Picker interface {
	Pick(ctx context.Context, candidates []*Candidate) (*Candidate, error)
}

// PickerFunc adapts a function to a Picker.
type PickerFunc func(ctx context.Context, candidates []*Candidate) (*Candidate, error)

// Pick calls f.
func (f PickerFunc) Pick(ctx context.Context, candidates []*Candidate) (*Candidate, error) {
	return f(ctx, candidates)
}

// PickerByName returns the picker a client.router value names.
func PickerByName(name string) (Picker, error) {
	switch name {
	case "round_robin", "":
		return RoundRobin(), nil
	case "random":
		return Random(), nil
	case "power_of_two":
		return PowerOfTwo(), nil
	case "least_loaded":
		return LeastLoaded(), nil
	}
	return nil, fmt.Errorf("loom: unknown router %q; use round_robin, random, power_of_two or least_loaded", name)
}

// RoundRobin returns a picker that takes the instances in turn.
func RoundRobin() Picker {
	var n atomic.Uint64
	return PickerFunc(func(_ context.Context, c []*Candidate) (*Candidate, error) {
		if len(c) == 1 {
			return c[0], nil // no turn to take: no write to the shared counter
		}
		return c[(n.Add(1)-1)%uint64(len(c))], nil
	})
}

// Random returns a picker that takes an instance uniformly at random.
func Random() Picker {
	return PickerFunc(func(_ context.Context, c []*Candidate) (*Candidate, error) {
		return c[rand.IntN(len(c))], nil
	})
}

// PowerOfTwo returns a picker that samples two instances at random and
// takes the one with fewer requests in flight: nearly as well balanced as
// LeastLoaded at a constant cost.
func PowerOfTwo() Picker {
	return PickerFunc(func(_ context.Context, c []*Candidate) (*Candidate, error) {
		if len(c) == 1 {
			return c[0], nil
		}
		i := rand.IntN(len(c))
		j := rand.IntN(len(c) - 1)
		if j >= i {
			j++
		}
		if c[j].InFlight() < c[i].InFlight() {
			return c[j], nil
		}
		return c[i], nil
	})
}

// LeastLoaded returns a picker that takes the instance with the fewest
// requests in flight, breaking ties in turn so that idle instances share
// the load.
func LeastLoaded() Picker {
	var n atomic.Uint64
	return PickerFunc(func(_ context.Context, c []*Candidate) (*Candidate, error) {
		if len(c) == 1 {
			return c[0], nil
		}
		start := int((n.Add(1) - 1) % uint64(len(c)))
		best := c[start]
		for k := 1; k < len(c); k++ {
			cand := c[(start+k)%len(c)]
			if cand.InFlight() < best.InFlight() {
				best = cand
			}
		}
		return best, nil
	})
}
