package kube

import (
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	kwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// The types the Lease client reads and writes: coordination.k8s.io/v1 and
// the meta types every API group shares (options, Status, watch events).
//
// client-go's typed clients decode with k8s.io/client-go/kubernetes/scheme,
// which registers every built-in API group: linking it costs about 90 more
// packages (all of k8s.io/api) and a third of the kube backend's cold build
// time, in every program that imports this package (cmd/loom among them).
// The Leases of one namespace are all this package touches, so it speaks to
// them through a REST client of that group alone.
var (
	leaseScheme = runtime.NewScheme()
	leaseCodecs = serializer.NewCodecFactory(leaseScheme)
	leaseParams = runtime.NewParameterCodec(leaseScheme)
)

func init() {
	if err := coordinationv1.AddToScheme(leaseScheme); err != nil {
		panic("kube: registering coordination.k8s.io/v1: " + err.Error())
	}
	metav1.AddToGroupVersion(leaseScheme, schema.GroupVersion{Version: "v1"})
}

// restConfig returns a copy of rc that makes REST clients of the
// coordination.k8s.io/v1 group with leaseScheme's codecs.
func restConfig(rc *rest.Config) *rest.Config {
	rc = rest.CopyConfig(rc)
	gv := coordinationv1.SchemeGroupVersion
	rc.GroupVersion = &gv
	rc.APIPath = "/apis"
	rc.NegotiatedSerializer = leaseCodecs.WithoutConversion()
	if rc.UserAgent == "" {
		rc.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rc
}

// leaseClient reads and writes the Leases of one namespace through a REST
// client of the coordination.k8s.io/v1 group. Its methods are those of
// client-go's typed LeaseInterface that this package uses.
type leaseClient struct {
	c  rest.Interface
	ns string
}

func (l leaseClient) Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error) {
	out := new(coordinationv1.Lease)
	err := l.c.Get().Namespace(l.ns).Resource("leases").Name(name).
		VersionedParams(&opts, leaseParams).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	out := new(coordinationv1.LeaseList)
	err := l.c.Get().Namespace(l.ns).Resource("leases").
		VersionedParams(&opts, leaseParams).Timeout(timeout(opts)).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) Watch(ctx context.Context, opts metav1.ListOptions) (kwatch.Interface, error) {
	opts.Watch = true
	return l.c.Get().Namespace(l.ns).Resource("leases").
		VersionedParams(&opts, leaseParams).Timeout(timeout(opts)).Watch(ctx)
}

func (l leaseClient) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	out := new(coordinationv1.Lease)
	err := l.c.Post().Namespace(l.ns).Resource("leases").
		VersionedParams(&opts, leaseParams).Body(lease).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	out := new(coordinationv1.Lease)
	err := l.c.Put().Namespace(l.ns).Resource("leases").Name(lease.Name).
		VersionedParams(&opts, leaseParams).Body(lease).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return l.c.Delete().Namespace(l.ns).Resource("leases").Name(name).
		Body(&opts).Do(ctx).Error()
}

// timeout is the request timeout a list or watch asks the server for, so
// the client gives up no earlier than the server would.
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}
