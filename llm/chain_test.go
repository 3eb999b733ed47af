package llm

import (
	"math/rand/v2"
	"testing"
)

func TestChainHashExtendsBlockHashes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, bs := range []int{1, 4, 16} {
		toks := make([]uint32, 10*bs+3)
		for i := range toks {
			toks[i] = r.Uint32()
		}
		want := BlockHashes(toks, bs)
		var parent uint64
		for i, w := range want {
			got := ChainHash(parent, toks[i*bs:(i+1)*bs])
			if got != w {
				t.Fatalf("block size %d: ChainHash of block %d = %x, BlockHashes says %x", bs, i, got, w)
			}
			parent = got
		}
	}
}
