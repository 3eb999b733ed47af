package loom

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/discovery"
)

// coreWith returns a client core routing with p among n instances, ids 1
// to n, and those instances.
func coreWith(p Picker, n int) (*clientCore, []*Candidate) {
	list := make([]*Candidate, n)
	for i := range list {
		list[i] = &Candidate{Instance: discovery.Instance{ID: uint64(i + 1)}}
	}
	return &clientCore{path: "test/choose/gen", picker: p}, list
}

// avoid puts cand in cooldown for d (negative: a cooldown that has ended).
func avoid(cand *Candidate, d time.Duration) { cand.avoidUntil.Store(time.Now().Add(d).UnixNano()) }

func TestChoosingAroundAnInstanceInCooldownAllocatesNothing(t *testing.T) {
	pickers := []struct {
		name string
		p    Picker
	}{
		{"round_robin", RoundRobin()},
		{"random", Random()},
		{"power_of_two", PowerOfTwo()},
		{"least_loaded", LeastLoaded()},
	}
	for _, pk := range pickers {
		t.Run(pk.name+" picks the other of two instances, allocating nothing", func(t *testing.T) {
			c, list := coreWith(pk.p, 2)
			avoid(list[0], time.Hour)
			var got *Candidate
			allocs := testing.AllocsPerRun(1000, func() {
				cand, err := c.choose(context.Background(), list)
				if err != nil {
					t.Fatal(err)
				}
				got = cand
			})
			if got != list[1] {
				t.Fatalf("chose instance %d, want 2 (1 is in cooldown)", got.ID)
			}
			if allocs != 0 {
				t.Errorf("choose allocated %v times per call with an instance in cooldown; want 0", allocs)
			}
		})
	}
}

// offered returns a picker that records the candidates it is offered, by
// id, and takes the first.
func offered(ids *[]uint64) Picker {
	return PickerFunc(func(_ context.Context, cs []*Candidate) (*Candidate, error) {
		*ids = (*ids)[:0]
		for _, c := range cs {
			*ids = append(*ids, c.ID)
		}
		return cs[0], nil
	})
}

func TestThePickerIsOfferedTheInstancesNotInCooldownAsTheyChange(t *testing.T) {
	var got []uint64
	c, list := coreWith(offered(&got), 3)
	steps := []struct {
		name  string
		avoid map[int]time.Duration // index in list: cooldown left
		list  []*Candidate          // the list choose is given; all three if nil
		want  []uint64
	}{
		{"none avoided: all", nil, nil, []uint64{1, 2, 3}},
		{"the middle one avoided: the others", map[int]time.Duration{1: time.Hour}, nil, []uint64{1, 3}},
		{"the same again", nil, nil, []uint64{1, 3}},
		{"the first avoided too: the last", map[int]time.Duration{0: time.Hour}, nil, []uint64{3}},
		{"the first's cooldown over: it is back", map[int]time.Duration{0: -time.Second}, nil, []uint64{1, 3}},
		{"given the first two only: the first", nil, list[:2], []uint64{1}},
		{"given all again: the first and last", nil, nil, []uint64{1, 3}},
		{"the last avoided: the first", map[int]time.Duration{2: time.Hour}, nil, []uint64{1}},
		{"all avoided: all of them", map[int]time.Duration{0: time.Hour}, nil, []uint64{1, 2, 3}},
		{"the middle one's cooldown over: it", map[int]time.Duration{1: -time.Second}, nil, []uint64{2}},
		{"all cooldowns over: all", map[int]time.Duration{0: -time.Second, 2: -time.Second}, nil, []uint64{1, 2, 3}},
	}
	for _, s := range steps {
		for i, d := range s.avoid {
			avoid(list[i], d)
		}
		in := s.list
		if in == nil {
			in = list
		}
		if _, err := c.choose(context.Background(), in); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: picker offered %v, want %v", s.name, got, s.want)
		}
	}
}

func TestThePickerIsOfferedExactlyTheInstancesNotInCooldown(t *testing.T) {
	// Against the plain definition, over random cooldowns and lists,
	// including lists choose is given while retrying (a subset).
	var got []uint64
	c, all := coreWith(offered(&got), 6)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		for _, cand := range all {
			switch rng.IntN(4) {
			case 0:
				avoid(cand, time.Hour)
			case 1:
				avoid(cand, -time.Second)
			}
		}
		list := all
		if rng.IntN(3) == 0 {
			list = slices.DeleteFunc(slices.Clone(all), func(*Candidate) bool { return rng.IntN(2) == 0 })
			if len(list) == 0 {
				continue
			}
		}
		var want []uint64
		for _, cand := range list {
			if cand.avoidUntil.Load() <= time.Now().UnixNano() {
				want = append(want, cand.ID)
			}
		}
		if len(want) == 0 {
			for _, cand := range list {
				want = append(want, cand.ID)
			}
		}
		if _, err := c.choose(context.Background(), list); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: picker offered %v, want %v", round, got, want)
		}
	}
}

func TestConcurrentChoicesAreOfferedOnlyInstancesOfTheirList(t *testing.T) {
	// Calls in parallel while cooldowns come and go: each picker sees a
	// sorted, non-empty part of the list it was given, never a list
	// another call is still changing (-race checks that). The list is
	// shared, so it has no room past its end: a picker appending to it
	// gets a copy rather than writing where another picker may.
	c, list := coreWith(PickerFunc(func(_ context.Context, cs []*Candidate) (*Candidate, error) {
		if len(cs) == 0 || !slices.IsSortedFunc(cs, func(a, b *Candidate) int { return cmp.Compare(a.ID, b.ID) }) {
			return nil, fmt.Errorf("offered %d candidates, not sorted or none", len(cs))
		}
		if cap(cs) != len(cs) {
			return nil, fmt.Errorf("offered %d candidates with room for %d: a picker's append would write into a shared list", len(cs), cap(cs))
		}
		return cs[len(cs)-1], nil
	}), 4)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 2000 {
				avoid(list[rng.IntN(len(list))], time.Duration(rng.IntN(3)-1)*time.Hour)
				cand, err := c.choose(context.Background(), list)
				if err == nil && !slices.Contains(list, cand) {
					err = fmt.Errorf("chose instance %d, not in the list", cand.ID)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestANewInstanceListForgetsTheInstancesSparedFromTheOld(t *testing.T) {
	// The spared list is only a saved allocation; it must not keep
	// instances discovery has dropped reachable.
	c, list := coreWith(RoundRobin(), 2)
	avoid(list[0], time.Hour)
	if _, err := c.choose(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	if c.spared.Load() == nil {
		t.Fatal("choose kept no list of the instances spared")
	}
	c.cands, c.changed = map[uint64]*Candidate{2: list[1]}, make(chan struct{})
	c.mu.Lock()
	c.publish()
	c.mu.Unlock()
	if p := c.spared.Load(); p != nil {
		t.Errorf("after the list changed, choose still keeps %d instances spared", len(*p))
	}
}
