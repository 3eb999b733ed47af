package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// rawCodec carries []byte as is, so gRPC pays no protobuf cost: without
// protoc here, this is the fairest gRPC there is (and a little faster
// than protobuf's bytes field would be).
type rawCodec struct{}

func (rawCodec) Name() string { return "raw" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

// Unmarshal copies into *v's array: gRPC frees data after the call.
func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

// echoService is what protoc would generate for
//
//	service Echo {
//	  rpc Unary(Msg) returns (Msg);
//	  rpc Stream(Msg) returns (stream Msg);
//	}
var echoService = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req []byte
			if err := dec(&req); err != nil {
				return nil, err
			}
			return req, nil
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		Handler: func(_ any, s grpc.ServerStream) error {
			var req []byte
			if err := s.RecvMsg(&req); err != nil {
				return err
			}
			for i := range seqOf(req) {
				// gRPC may still hold the slice after SendMsg returns, so
				// each item is a new one.
				if err := s.SendMsg(fill(make([]byte, 0, msgSize), i)); err != nil {
					return err
				}
			}
			return nil
		},
	}},
}

// startGRPC starts a gRPC server with default settings and one client
// connection (one HTTP/2 connection, as Loom uses one TCP connection).
func startGRPC(tb testing.TB) *peer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("grpc: listen: %v", err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&echoService, struct{}{})
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	conn, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		srv.Stop()
		wg.Wait()
		tb.Fatalf("grpc: client: %v", err)
	}
	return &peer{
		unary: func(ctx context.Context, req, buf []byte) ([]byte, error) {
			resp := buf[:0]
			err := conn.Invoke(ctx, "/bench.Echo/Unary", req, &resp)
			return resp, err
		},
		stream: func(ctx context.Context, req []byte, item func([]byte) error) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := conn.NewStream(ctx, &echoService.Streams[0], "/bench.Echo/Stream")
			if err != nil {
				return err
			}
			if err := st.SendMsg(req); err != nil {
				return err
			}
			if err := st.CloseSend(); err != nil {
				return err
			}
			buf := make([]byte, 0, msgSize)
			for {
				if err := st.RecvMsg(&buf); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
				if err := item(buf); err != nil {
					return err
				}
			}
		},
		close: func() {
			conn.Close()
			srv.Stop()
			wg.Wait()
		},
	}
}
