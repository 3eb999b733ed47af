package loom

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"unsafe"
)

// ErrNoResponse is returned by Client.Call when the call ended without a
// response.
var ErrNoResponse = errors.New("loom: call ended without a response")

// Call sends req and waits for the call to end: it returns the one
// response, or the error the call ended with. It routes, retries and
// reports errors as Generate does, without an iterator: an endpoint that
// answers once costs no closure per call. A call that ends without a
// response fails with ErrNoResponse; one whose handler sends a second
// response is ended there (as breaking out of a loop over Generate ends
// it) and Call returns the first. A []byte response is the caller's even
// with WithBorrowedResponses.
func (c *Client[Req, Resp]) Call(ctx context.Context, req Req) (Resp, error) {
	u, _ := c.unaries.Get().(*unary[Resp])
	if u == nil {
		u = &unary[Resp]{borrowed: c.core.borrow}
		u.yield = u.take
	}
	c.run(ctx, req, 0, u.yield)
	resp, n, err := u.resp, u.n, u.err
	var zero Resp
	u.resp, u.n, u.err = zero, 0, nil
	c.unaries.Put(u)
	switch {
	case err != nil:
		return zero, err
	case n == 0:
		return zero, fmt.Errorf("%w: %s", ErrNoResponse, c.core.path)
	}
	return resp, nil
}

// unary collects the response of a Call. It is pooled with its yield
// function, which the call path takes as a func value: a method value
// made per call would be an allocation.
type unary[Resp any] struct {
	resp     Resp
	n        int
	err      error
	borrowed bool // []byte items alias the receive buffer
	yield    func(Resp, error) bool
}

func (u *unary[Resp]) take(item Resp, err error) bool {
	if err != nil {
		u.err = err
		return false
	}
	if u.n++; u.n > 1 {
		return false
	}
	if u.borrowed {
		if b, ok := any(&item).(*[]byte); ok {
			*(*[]byte)(unsafe.Pointer(&u.resp)) = bytes.Clone(*b)
			return true
		}
	}
	u.resp = item
	return true
}
