package dashboard_test

import (
	"context"
	"log"
	"net/http"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/dashboard"
)

// A program mounts the page under a path of its own HTTP server; the
// runtime's configuration (NATS_SERVER, LOOM_DISCOVERY, ...) says which
// system it shows.
func Example() {
	ctx := context.Background()
	rt, err := loom.NewRuntime(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Shutdown(ctx)
	d, err := dashboard.New(ctx, rt, dashboard.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	mux := http.NewServeMux()
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", d))
	log.Fatal(http.ListenAndServe("127.0.0.1:8090", mux))
}

// Listen serves the page on an address of its own, as `loom dashboard`
// does.
func ExampleListen() {
	ctx := context.Background()
	rt, err := loom.NewRuntime(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Shutdown(ctx)
	d, err := dashboard.New(ctx, rt, dashboard.Config{})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := dashboard.Listen(d, "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	log.Println("dashboard on", srv.URL())
}
