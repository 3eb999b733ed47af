package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/loomrt/loom/config"
)

// dirs are the kustomize directories.
var dirs = []string{".", "etcd"}

// objects decodes every manifest in dir that its kustomization lists, and
// fails if a YAML file there is not listed.
func objects(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("%s is not in %s/kustomization.yaml's resources", f, dir)
		}
	}
	var objs []runtime.Object
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s document %d: %v", filepath.Join(dir, r), i, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

func stripComments(doc string) string {
	var out bytes.Buffer
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			out.WriteString(line)
		}
	}
	return out.String()
}

func TestEveryManifestDecodes(t *testing.T) {
	for _, dir := range dirs {
		if n := len(objects(t, dir)); n == 0 {
			t.Errorf("%s has no objects", dir)
		}
	}
}

func find[T runtime.Object](objs []runtime.Object, name func(T) string, want string) (T, bool) {
	for _, o := range objs {
		if v, ok := o.(T); ok && name(v) == want {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// The Loom service's environment is valid Loom configuration, and its
// probes, preStop and grace period agree with it.
func TestTheLoomServiceMatchesLoomsConfiguration(t *testing.T) {
	objs := objects(t, ".")
	dep, ok := find(objs, func(d *appsv1.Deployment) string { return d.Name }, "loom-service")
	if !ok {
		t.Fatal("no Deployment loom-service")
	}
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	env := map[string]string{}
	fields := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[e.Name] = e.ValueFrom.FieldRef.FieldPath
			env[e.Name] = "downward-" + strings.ToLower(e.Name)
			continue
		}
		// Kubernetes expands $(VAR) from the variables before it.
		env[e.Name] = regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(e.Value, func(m string) string {
			return env[m[2:len(m)-1]]
		})
	}
	for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"} {
		if fields[name] != path {
			t.Errorf("env %s comes from %q; want the downward API's %s", name, fields[name], path)
		}
	}
	loaded, err := config.Load(config.WithDirs(), config.WithEnv(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}))
	if err != nil {
		t.Fatalf("the service's environment is not valid Loom configuration: %v", err)
	}
	cfg := loaded.Config
	if cfg.Discovery.Backend != "kubernetes" || cfg.Discovery.PodName == "" || cfg.Discovery.PodUID == "" || cfg.Discovery.KubernetesNamespace == "" {
		t.Errorf("discovery config %+v; want backend kubernetes with the Pod's name, uid and namespace", cfg.Discovery)
	}
	if cfg.RequestPlane.Advertise != "downward-pod_ip:"+fmt.Sprint(cfg.RequestPlane.Port) {
		t.Errorf("request_plane.advertise = %q; want the Pod's IP and request_plane.port %d", cfg.RequestPlane.Advertise, cfg.RequestPlane.Port)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if int(ports["status"]) != cfg.Status.Port || int(ports["request-plane"]) != cfg.RequestPlane.Port {
		t.Errorf("container ports %v; want status %d and request-plane %d", ports, cfg.Status.Port, cfg.RequestPlane.Port)
	}
	probe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "status" {
			t.Errorf("%s probe %+v; want GET %s on the status port", name, p, path)
		}
	}
	probe("liveness", c.LivenessProbe, "/live")
	probe("readiness", c.ReadinessProbe, "/health")

	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatal("no preStop sleep")
	}
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if cfg.Shutdown.GracePeriod >= cfg.Shutdown.Timeout {
		t.Errorf("shutdown.grace_period %v is not below shutdown.timeout %v", cfg.Shutdown.GracePeriod, cfg.Shutdown.Timeout)
	}
	if need := preStop + cfg.Shutdown.Timeout; grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v leaves no margin over preStop %v + shutdown.timeout %v: Kubernetes would SIGKILL a drain Loom is still allowed",
			grace, preStop, cfg.Shutdown.Timeout)
	}
	if pod.ServiceAccountName != "loom" {
		t.Errorf("serviceAccountName %q; want loom, which the Role is bound to", pod.ServiceAccountName)
	}
}

// The Role grants what the kubernetes discovery backend uses, on Leases
// alone, and is bound to the service's account.
func TestTheRoleIsTheSmallestGrant(t *testing.T) {
	objs := objects(t, ".")
	role, ok := find(objs, func(r *rbacv1.Role) string { return r.Name }, "loom-discovery")
	if !ok {
		t.Fatal("no Role loom-discovery")
	}
	want := []rbacv1.PolicyRule{{
		APIGroups: []string{"coordination.k8s.io"},
		Resources: []string{"leases"},
		Verbs:     []string{"get", "list", "watch", "create", "update", "delete"},
	}}
	if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
		t.Errorf("Role rules %+v; want %+v", role.Rules, want)
	}
	rb, ok := find(objs, func(r *rbacv1.RoleBinding) string { return r.Name }, "loom-discovery")
	if !ok || rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != "loom" {
		t.Errorf("RoleBinding %+v; want the Role bound to ServiceAccount loom", rb)
	}
}

func TestNATSIsAThreeNodeJetStreamCluster(t *testing.T) {
	objs := objects(t, ".")
	sts, ok := find(objs, func(s *appsv1.StatefulSet) string { return s.Name }, "nats")
	if !ok || sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Fatalf("StatefulSet nats %+v; want 3 replicas", sts)
	}
	cm, ok := find(objs, func(c *corev1.ConfigMap) string { return c.Name }, "nats-config")
	if !ok {
		t.Fatal("no ConfigMap nats-config")
	}
	conf := cm.Data["nats.conf"]
	for i := range 3 {
		if route := fmt.Sprintf("nats://nats-%d.%s:6222", i, sts.Spec.ServiceName); !strings.Contains(conf, route) {
			t.Errorf("nats.conf has no route %s", route)
		}
	}
	if !strings.Contains(conf, "jetstream {") {
		t.Error("nats.conf does not enable JetStream")
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Error("NATS has no volume for JetStream's files")
	}
}

// podTemplates returns the Pod template of every workload in objs, by
// "Kind/name".
func podTemplates(objs []runtime.Object) map[string]*corev1.PodTemplateSpec {
	pods := map[string]*corev1.PodTemplateSpec{}
	for _, o := range objs {
		switch w := o.(type) {
		case *appsv1.Deployment:
			pods["Deployment/"+w.Name] = &w.Spec.Template
		case *appsv1.StatefulSet:
			pods["StatefulSet/"+w.Name] = &w.Spec.Template
		case *appsv1.DaemonSet:
			pods["DaemonSet/"+w.Name] = &w.Spec.Template
		case *corev1.Pod:
			pods["Pod/"+w.Name] = &corev1.PodTemplateSpec{ObjectMeta: w.ObjectMeta, Spec: w.Spec}
		}
	}
	return pods
}

// Every Pod the manifests make passes the Pod Security Standards'
// restricted profile, as the PodSecurity admission plugin evaluates it
// (its own checks, at the latest version), and runs on a read-only root
// filesystem: each process writes only to its volumes.
func TestEveryPodTemplateIsRestricted(t *testing.T) {
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	restricted := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	n := 0
	for _, dir := range dirs {
		for name, pod := range podTemplates(objects(t, dir)) {
			n++
			if r := policy.AggregateCheckResults(eval.EvaluatePod(restricted, &pod.ObjectMeta, &pod.Spec)); !r.Allowed {
				for i, reason := range r.ForbiddenReasons {
					t.Errorf("%s/%s violates the restricted Pod Security Standard: %s (%s)", dir, name, reason, r.ForbiddenDetails[i])
				}
			}
			for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
				if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
					t.Errorf("%s/%s container %s: readOnlyRootFilesystem is not true; give what it writes a volume", dir, name, c.Name)
				}
			}
		}
	}
	if n != 3 {
		t.Errorf("checked %d Pod templates; want 3 (loom-service, nats, etcd)", n)
	}
}

// Every workload of more than one replica has a PodDisruptionBudget that
// lets a drain take one Pod at a time and keeps what the workload needs: a
// Loom service keeps at least one Pod, a StatefulSet (NATS with JetStream,
// etcd: Raft groups both) keeps its quorum. Each budget selects exactly one
// workload's Pods, across both directories (they share a namespace).
func TestEveryReplicatedWorkloadHasADisruptionBudget(t *testing.T) {
	type workload struct {
		dir, name string
		replicas  int
		keep      int // the Pods a disruption must leave
		labels    labels.Set
	}
	var workloads []workload
	var pdbs []*policyv1.PodDisruptionBudget
	pdbDir := map[*policyv1.PodDisruptionBudget]string{}
	for _, dir := range dirs {
		for _, o := range objects(t, dir) {
			switch o := o.(type) {
			case *appsv1.Deployment:
				n := int(ptr.Deref(o.Spec.Replicas, 1))
				workloads = append(workloads, workload{dir, "Deployment/" + o.Name, n, 1, o.Spec.Template.Labels})
			case *appsv1.StatefulSet:
				n := int(ptr.Deref(o.Spec.Replicas, 1))
				workloads = append(workloads, workload{dir, "StatefulSet/" + o.Name, n, n/2 + 1, o.Spec.Template.Labels})
			case *policyv1.PodDisruptionBudget:
				pdbs = append(pdbs, o)
				pdbDir[o] = dir
			}
		}
	}
	selects := func(pdb *policyv1.PodDisruptionBudget, w workload) bool {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil {
			t.Fatalf("PodDisruptionBudget %s: selector: %v", pdb.Name, err)
		}
		return pdb.Spec.Selector != nil && !sel.Empty() && sel.Matches(w.labels)
	}
	for _, pdb := range pdbs {
		var names []string
		for _, w := range workloads {
			if selects(pdb, w) {
				names = append(names, w.dir+"/"+w.name)
			}
		}
		if len(names) != 1 {
			t.Errorf("%s/PodDisruptionBudget %s selects the Pods of %v; want exactly one workload's", pdbDir[pdb], pdb.Name, names)
		}
	}
	for _, w := range workloads {
		if w.replicas < 2 {
			continue
		}
		var pdb *policyv1.PodDisruptionBudget
		for _, p := range pdbs {
			if selects(p, w) {
				if pdbDir[p] != w.dir {
					t.Errorf("%s/%s: its PodDisruptionBudget %s is in %s; want it in the same kustomize directory", w.dir, w.name, p.Name, pdbDir[p])
				}
				pdb = p
			}
		}
		if pdb == nil {
			t.Errorf("%s/%s has %d replicas and no PodDisruptionBudget: a drain may evict them all at once", w.dir, w.name, w.replicas)
			continue
		}
		var allowed int
		switch {
		case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MinAvailable == nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, w.replicas, true)
			if err != nil {
				t.Fatalf("PodDisruptionBudget %s maxUnavailable: %v", pdb.Name, err)
			}
			allowed = n
		case pdb.Spec.MinAvailable != nil && pdb.Spec.MaxUnavailable == nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, w.replicas, true)
			if err != nil {
				t.Fatalf("PodDisruptionBudget %s minAvailable: %v", pdb.Name, err)
			}
			allowed = w.replicas - n
		default:
			t.Errorf("PodDisruptionBudget %s sets %v minAvailable and %v maxUnavailable; want one of them", pdb.Name, pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
			continue
		}
		if allowed < 1 {
			t.Errorf("%s/%s: PodDisruptionBudget %s allows %d of %d Pods down: a drain could never evict one", w.dir, w.name, pdb.Name, allowed, w.replicas)
		}
		if w.replicas-allowed < w.keep {
			t.Errorf("%s/%s: PodDisruptionBudget %s allows %d of %d Pods down; want at least %d kept", w.dir, w.name, pdb.Name, allowed, w.replicas, w.keep)
		}
	}
}

// Each server writes only below the volumes mounted for it, and etcd's
// data directory is a directory below its volume's root, not the root:
// fsGroup makes the root group-writable, and etcd warned at every start
// that its data directory was not mode 0700; one it creates itself is.
// (nats-server makes its own 0700 jetstream directory in store_dir, and
// checks no mode.) Run as the manifests run them, as uid 65532 on a
// group-writable directory, etcd (3.7) and nats-server (2.15) write
// nothing else.
func TestEachServerWritesBelowItsVolumes(t *testing.T) {
	// mounted returns the writable mount of container c that holds dir,
	// and whether dir is that mount's root.
	mounted := func(t *testing.T, pod *corev1.PodTemplateSpec, sts *appsv1.StatefulSet, c corev1.Container, dir string) (root bool) {
		t.Helper()
		dir = path.Clean(dir)
		for _, m := range c.VolumeMounts {
			mp := path.Clean(m.MountPath)
			if m.ReadOnly || (dir != mp && !strings.HasPrefix(dir, mp+"/")) {
				continue
			}
			writable := slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name }) ||
				slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name && v.EmptyDir != nil })
			if writable {
				return dir == mp
			}
		}
		t.Fatalf("%s: %s is on no PersistentVolume or emptyDir mounted in container %s: the root filesystem is read-only", sts.Name, dir, c.Name)
		return false
	}
	container := func(t *testing.T, sts *appsv1.StatefulSet, name string) corev1.Container {
		t.Helper()
		for _, c := range sts.Spec.Template.Spec.Containers {
			if c.Name == name {
				return c
			}
		}
		t.Fatalf("StatefulSet %s has no container %s", sts.Name, name)
		return corev1.Container{}
	}

	t.Run("etcd", func(t *testing.T) {
		sts, ok := find(objects(t, "etcd"), func(s *appsv1.StatefulSet) string { return s.Name }, "etcd")
		if !ok {
			t.Fatal("no StatefulSet etcd")
		}
		c := container(t, sts, "etcd")
		dirs := map[string]string{}
		for _, arg := range slices.Concat(c.Command, c.Args) {
			for _, flag := range []string{"--data-dir", "--wal-dir"} {
				if v, ok := strings.CutPrefix(arg, flag+"="); ok {
					dirs[flag] = v
				}
			}
		}
		if dirs["--data-dir"] == "" {
			t.Fatalf("etcd's command %q sets no --data-dir: etcd would write ${name}.etcd in its working directory, on the read-only root", c.Command)
		}
		for flag, dir := range dirs {
			if mounted(t, &sts.Spec.Template, sts, c, dir) {
				t.Errorf("etcd %s=%s is its volume's root, which fsGroup makes group-writable; etcd warns at every start that its data is not mode 0700: give it a directory below the root, which etcd creates 0700", flag, dir)
			}
		}
	})

	t.Run("nats", func(t *testing.T) {
		objs := objects(t, ".")
		sts, ok := find(objs, func(s *appsv1.StatefulSet) string { return s.Name }, "nats")
		if !ok {
			t.Fatal("no StatefulSet nats")
		}
		cm, ok := find(objs, func(c *corev1.ConfigMap) string { return c.Name }, "nats-config")
		if !ok {
			t.Fatal("no ConfigMap nats-config")
		}
		c := container(t, sts, "nats")
		conf := cm.Data["nats.conf"]
		for _, key := range []string{"store_dir", "pid_file"} {
			m := regexp.MustCompile(`(?m)^\s*` + key + `:\s*(\S+)\s*$`).FindStringSubmatch(conf)
			if m == nil {
				t.Errorf("nats.conf sets no %s", key)
				continue
			}
			dir := m[1]
			if key == "pid_file" {
				dir = path.Dir(dir)
			}
			mounted(t, &sts.Spec.Template, sts, c, dir)
		}
	})
}
