package llm

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// ChainHash returns the hash of one full block of tokens chained to
// parent (0 for the first block of a sequence): the value BlockHashes
// gives that block. Workers use it to extend a sequence's chain one block
// at a time as they generate.
func ChainHash(parent uint64, block []uint32) uint64 {
	var d xxhash.Digest
	d.Reset()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], parent)
	_, _ = d.Write(b[:])
	for _, t := range block {
		binary.LittleEndian.PutUint32(b[:4], t)
		_, _ = d.Write(b[:4])
	}
	return d.Sum64()
}

// KvBlocksRequest asks a worker's KvBlocksEndpoint for its whole block
// set. The worker streams KvSnapshot chunks of at most ChunkBlocks blocks
// each (its own default when 0), all with the same EventID.
type KvBlocksRequest struct {
	ChunkBlocks int `json:"chunk_blocks,omitempty" msgpack:"chunk_blocks,omitempty"`
}
