package resolve

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// debounce gathers a burst of changes (a rollout touches many objects) into
// one call.
const debounce = 300 * time.Millisecond

// Watch calls changed after the Service ns/name, its EndpointSlices or the
// Pods its selector matches change, until ctx ends. Each watch is narrowed
// by a field or label selector, so the API server sends only those objects.
// selector returns the Service's current selector: when it changes, the Pod
// watch follows. failing is called when the watches fail (the API server
// went away, credentials expired), once per outage; the informers retry on
// their own, and the first change after is reported as usual.
func (a *API) Watch(ctx context.Context, ns, name string, selector func() map[string]string, changed func(), failing func(error)) {
	poke := make(chan struct{}, 1)
	var down atomic.Bool // an outage was reported; cleared by the next change
	run := func(ctx context.Context, obj runtime.Object, list cache.ListWithContextFunc, w cache.WatchFuncWithContext) {
		report := func(err error) {
			if err != nil && ctx.Err() == nil && failing != nil && down.CompareAndSwap(false, true) {
				failing(err)
			}
		}
		startInformer(ctx, obj, list, w, report, poke, nil)
	}
	byName := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	}
	// Lists end after the request timeout; watches last (Streaming).
	services, watchServices := a.Client.CoreV1().Services(ns), a.Streaming().CoreV1().Services(ns)
	run(ctx, &corev1.Service{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			byName(&o)
			return services.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			byName(&o)
			return watchServices.Watch(ctx, o)
		})
	ofService := func(o *metav1.ListOptions) {
		o.LabelSelector = labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}).String()
	}
	slices, watchSlices := a.Client.DiscoveryV1().EndpointSlices(ns), a.Streaming().DiscoveryV1().EndpointSlices(ns)
	run(ctx, &discoveryv1.EndpointSlice{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			ofService(&o)
			return slices.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			ofService(&o)
			return watchSlices.Watch(ctx, o)
		})

	pods, watchPodsIn := a.Client.CoreV1().Pods(ns), a.Streaming().CoreV1().Pods(ns)
	var stopPods context.CancelFunc = func() {}
	var sel map[string]string
	watchPods := func() {
		cur := selector()
		if sel != nil && maps.Equal(cur, sel) {
			return
		}
		stopPods()
		sel = cur
		if len(sel) == 0 {
			sel = map[string]string{}
			return
		}
		var pctx context.Context
		pctx, stopPods = context.WithCancel(ctx)
		s := labels.SelectorFromSet(sel).String()
		run(pctx, &corev1.Pod{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = s
				return pods.List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.LabelSelector = s
				return watchPodsIn.Watch(ctx, o)
			})
	}
	watchPods()
	for {
		select {
		case <-ctx.Done():
			stopPods()
			return
		case <-poke:
		}
		select {
		case <-ctx.Done():
			stopPods()
			return
		case <-time.After(debounce):
		}
		drain(poke)
		down.Store(false)
		changed()
		watchPods()
	}
}

// startInformer runs an informer of obj over list and w until ctx ends,
// signalling poke on every change after its first list (that is the state
// already gathered, not a change). Every failed list and watch request
// goes to report, not only what reaches the informer's error handler: a
// watch that ends quietly (the API server closed the connection as it
// died) is re-opened inside the reflector, which retries a refused
// connection there with backoff for as long as it is refused, and never
// tells the handler. transform, if set, trims each object it keeps.
func startInformer(ctx context.Context, obj runtime.Object, list cache.ListWithContextFunc, w cache.WatchFuncWithContext,
	report func(error), poke chan struct{}, transform cache.TransformFunc) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, o)
			report(err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			wi, err := w(ctx, o)
			report(err)
			return wi, err
		},
	}
	inf := cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
	if transform != nil {
		inf.SetTransform(transform)
	}
	inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(_ any, initial bool) {
			if !initial {
				signal(poke)
			}
		},
		UpdateFunc: func(any, any) { signal(poke) },
		DeleteFunc: func(any) { signal(poke) },
	})
	inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) { report(err) })
	go inf.RunWithContext(ctx)
	return inf
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func drain(c chan struct{}) {
	select {
	case <-c:
	default:
	}
}

// CatalogWatch keeps the Services and EndpointSlices of a scope, listed
// once and then watched (informers, each object trimmed): svctrace -A's
// catalog without listing again on every change.
type CatalogWatch struct {
	ns        string
	svcs, sls cache.SharedIndexInformer
	mu        sync.Mutex
	last      *Catalog // what Catalog built last: the next reuses its models
}

// WatchCatalog starts watching the Services and EndpointSlices of ns ("":
// all) until ctx ends, and returns once both were listed. changed is
// called, after a burst of changes has settled, with the catalog as it is
// then; failing once per outage, as Watch's.
func (a *API) WatchCatalog(ctx context.Context, ns string, changed func(*Catalog), failing func(error)) (*CatalogWatch, error) {
	poke := make(chan struct{}, 1)
	var down atomic.Bool
	var firstErr atomic.Pointer[error]
	report := func(err error) {
		if err == nil || ctx.Err() != nil {
			return
		}
		firstErr.CompareAndSwap(nil, &err)
		if failing != nil && down.CompareAndSwap(false, true) {
			failing(err)
		}
	}
	inform := func(obj runtime.Object, list cache.ListWithContextFunc, w cache.WatchFuncWithContext) cache.SharedIndexInformer {
		return startInformer(ctx, obj, list, w, report, poke, trim)
	}
	svcs, watchSvcs := a.Client.CoreV1().Services(ns), a.Streaming().CoreV1().Services(ns)
	sls, watchSls := a.Client.DiscoveryV1().EndpointSlices(ns), a.Streaming().DiscoveryV1().EndpointSlices(ns)
	cw := &CatalogWatch{ns: ns,
		svcs: inform(&corev1.Service{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return svcs.List(ctx, o) },
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return watchSvcs.Watch(ctx, o)
			}),
		sls: inform(&discoveryv1.EndpointSlice{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return sls.List(ctx, o) },
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return watchSls.Watch(ctx, o)
			}),
	}
	// The first list either works or says why; an informer would retry
	// it for ever.
	listed := make(chan bool, 1)
	go func() { listed <- cache.WaitForCacheSync(ctx.Done(), cw.svcs.HasSynced, cw.sls.HasSynced) }()
	for done := false; !done; {
		select {
		case ok := <-listed:
			if !ok {
				return nil, ctx.Err()
			}
			done = true
		case <-time.After(100 * time.Millisecond):
			if err := firstErr.Load(); err != nil {
				return nil, a.explain(*err, "list", "services and endpointslices", ns)
			}
		}
	}
	down.Store(false)
	go func() {
		// A change costs what building the catalog and taking it up
		// (changed: the tracer's filter, the index) takes, ~0.1 s at
		// 10,000 Services: the next waits catalogSpacing times as long,
		// so that however busy the cluster, its changes take a bounded
		// share of a core.
		wait := debounce
		for {
			select {
			case <-ctx.Done():
				return
			case <-poke:
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			drain(poke)
			down.Store(false)
			start := time.Now()
			changed(cw.Catalog())
			wait = max(debounce, catalogSpacing*time.Since(start))
		}
	}()
	return cw, nil
}

// catalogSpacing: a change to the catalog waits this many times as long
// as the last took (at most 1/catalogSpacing of a core on changes).
const catalogSpacing = 20

// Catalog is the scope's Services as the watch holds them now.
func (cw *CatalogWatch) Catalog() *Catalog {
	var svcs []*corev1.Service
	for _, o := range cw.svcs.GetStore().List() {
		svcs = append(svcs, o.(*corev1.Service))
	}
	var sls []*discoveryv1.EndpointSlice
	for _, o := range cw.sls.GetStore().List() {
		sls = append(sls, o.(*discoveryv1.EndpointSlice))
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.last == nil {
		cw.last = NewCatalog(cw.ns, svcs, sls)
	} else {
		cw.last = cw.last.Next(svcs, sls)
	}
	return cw.last
}
