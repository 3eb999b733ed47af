package frontend

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/metrics"
)

// pickerAmong returns a frontend whose discovery view has n workers, every
// third of model "other" and the rest of model "m", its picker, and the
// candidates sorted by id as the client keeps them. Its router takes the
// first candidate it is given.
func pickerAmong(n int) (*Frontend, picker, []*loom.Candidate) {
	first := loom.PickerFunc(func(_ context.Context, cs []*loom.Candidate) (*loom.Candidate, error) { return cs[0], nil })
	f := &Frontend{instCards: map[uint64]llm.ModelCard{}, cards: map[string]llm.ModelCard{}, tracked: map[uint64]map[*attempt]struct{}{},
		router: llm.PickerRouter(first), m: metrics.New()}
	var cands []*loom.Candidate
	for i := range n {
		id := uint64(1 + (i*7919)%(50*n)) // spread, not in order of i
		f.instCards[id] = llm.ModelCard{Name: map[bool]string{true: "other", false: "m"}[i%3 == 0]}
		cands = append(cands, &loom.Candidate{Instance: discovery.Instance{ID: id}})
	}
	slices.SortFunc(cands, func(a, b *loom.Candidate) int { return cmp.Compare(a.ID, b.ID) })
	f.publishLocked()
	return f, picker{f}, cands
}

// The picker offers the router exactly the candidates of the request's
// model, whether they come sorted by id (as the client keeps them) or not.
func TestPickerKeepsToTheModelsWorkersInAnyOrder(t *testing.T) {
	f, p, cands := pickerAmong(300)
	var got []uint64
	router := loom.PickerFunc(func(_ context.Context, cs []*loom.Candidate) (*loom.Candidate, error) {
		got = got[:0]
		for _, c := range cs {
			got = append(got, c.ID)
		}
		return cs[0], nil
	})
	f.router = llm.PickerRouter(router)
	for _, order := range []string{"sorted", "shuffled", "sorted, then one out of place"} {
		cs := slices.Clone(cands)
		switch order {
		case "shuffled":
			rand.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
		case "sorted, then one out of place":
			cs = append(cs[:100:100], append([]*loom.Candidate{cs[len(cs)-1]}, cs[100:len(cs)-1]...)...)
		}
		var want []uint64
		for _, c := range cs {
			if f.instCards[c.ID].Name == "m" {
				want = append(want, c.ID)
			}
		}
		a := &attempt{f: f, model: "m"}
		if _, err := p.Pick(context.WithValue(context.Background(), attemptKey{}, a), cs); err != nil {
			t.Fatalf("%s: %v", order, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the router was offered %d candidates, want the %d of the model in the order given", order, len(got), len(want))
		}
	}
}

// BenchmarkPickAmong1024Workers is the frontend's part of a pick among a
// thousand workers: matching the candidates to the request's model.
func BenchmarkPickAmong1024Workers(b *testing.B) {
	f, p, cands := pickerAmong(1024)
	// Already tracked on the worker the router takes: the benchmark
	// leaves the tracking out.
	first := cands[slices.IndexFunc(cands, func(c *loom.Candidate) bool { return f.instCards[c.ID].Name == "m" })].ID
	a := &attempt{f: f, model: "m", tracked: true, worker: first}
	ctx := context.WithValue(context.Background(), attemptKey{}, a)
	b.ReportAllocs()
	for b.Loop() {
		if c, err := p.Pick(ctx, cands); err != nil || c.ID != first {
			b.Fatalf("picked %v, %v; want %x", c, err, first)
		}
	}
}
