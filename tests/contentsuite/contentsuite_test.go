// Package contentsuite runs containerd's own content store conformance suite
// (github.com/containerd/containerd/content/testsuite: ContentSuite and
// ContentCrossNSSharedSuite, 12 + 2 subtests) against any containerd-compatible
// gRPC socket, through containerd's own gRPC content client
// (content/proxy.NewContentStore over the containerd.services.content.v1 API).
//
// It is modelled on containerd's integration test (client/content_test.go,
// newContentStore + testsuite.ContentSuite), which does the same against a
// running daemon, with two differences: every test (and every extra context the
// cross-namespace tests ask for) gets a namespace of its own, never reused, and
// each such namespace runs under a lease created through the leases gRPC API
// (leases/proxy). When a test is done, its namespaces are emptied (ingests
// aborted, blobs deleted, which is part of what is tested), its leases deleted
// (synchronously, i.e. with garbage collection),
// and its namespaces deleted too, best effort (only logged if that fails: the
// namespaces service is not what this suite is about).
//
// Built against Debian bookworm's packaged containerd 1.6 source in GOPATH mode,
// offline; see scripts/e2e/content-suite.sh, which builds and runs it:
//
//	scripts/e2e/content-suite.sh /run/strata/strata.sock
//
// or by hand: STRATA_CONTENT_SUITE_ADDRESS=/path/to.sock ./contentsuite.test -test.v
package contentsuite

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/containerd/content"
	contentproxy "github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/content/testsuite"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/leases"
	leasesproxy "github.com/containerd/containerd/leases/proxy"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

// addressEnv names the environment variable holding the unix socket path.
const addressEnv = "STRATA_CONTENT_SUITE_ADDRESS"

var (
	// runID makes namespace names unique across runs against the same daemon.
	runID = strconv.FormatInt(time.Now().UnixNano(), 36)
	// testSeq numbers the tests (store initialisations) of this run.
	testSeq uint64
)

func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "ContentService", newStore(t))
}

func TestContentCrossNSSharedSuite(t *testing.T) {
	testsuite.ContentCrossNSSharedSuite(t, "ContentService", newStore(t))
}

// newStore returns the suite's store factory, called once per subtest.
func newStore(t *testing.T) testsuite.StoreInitFn {
	address := os.Getenv(addressEnv)
	if address == "" {
		t.Fatalf("%s is not set (path of the containerd-compatible unix socket)", addressEnv)
	}
	return func(ctx context.Context, _ string) (context.Context, content.Store, func() error, error) {
		conn, err := dial(address)
		if err != nil {
			return nil, nil, nil, err
		}
		cs := contentproxy.NewContentStore(contentapi.NewContentClient(conn))
		lm := leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))
		nsc := namespacesapi.NewNamespacesClient(conn)

		test := atomic.AddUint64(&testSeq, 1)
		logger := log.G(ctx) // the suite's ctx logs to the test (t.Log)
		var n uint64
		// The suite calls wrap once on the context it hands to the test
		// and, in the cross-namespace tests, once more on
		// context.Background() for a second namespace: each call gets a
		// fresh namespace and lease. done is deferred by the suite.
		wrap := func(ctx context.Context) (context.Context, func(context.Context) error, error) {
			ns := fmt.Sprintf("strata-cs-%s-t%d-n%d", runID, test, atomic.AddUint64(&n, 1))
			nsctx := namespaces.WithNamespace(ctx, ns)
			l, err := lm.Create(nsctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
			if err != nil {
				return nil, nil, fmt.Errorf("create lease in namespace %s: %w", ns, err)
			}
			logger.Debugf("namespace %s, lease %s", ns, l.ID)
			done := func(context.Context) error {
				if err := cleanNamespace(nsctx, cs); err != nil {
					return fmt.Errorf("clean namespace %s: %w", ns, err)
				}
				// Synchronous: the daemon collects garbage before
				// answering, so the blobs are gone from the shared
				// backing store before the next test or run. (The suite's
				// blobs are the same in every run, from fixed seeds; a
				// left-over one would make a fresh namespace's Writer
				// for its digest start at offset == size.)
				if err := lm.Delete(nsctx, l, leases.SynchronousDelete); err != nil {
					return fmt.Errorf("delete lease %s in namespace %s: %w", l.ID, ns, err)
				}
				req := &namespacesapi.DeleteNamespaceRequest{Name: ns}
				if _, err := nsc.Delete(context.Background(), req); err != nil {
					logger.Warnf("delete namespace %s (ignored): %v", ns, err)
				}
				return nil
			}
			return leases.WithLease(nsctx, l.ID), done, nil
		}
		return testsuite.SetContextWrapper(ctx, wrap), cs, conn.Close, nil
	}
}

// dial connects the way containerd's own client (containerd.New) does.
func dial(address string) (*grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(address),
		grpc.WithBlock(),
		grpc.WithInsecure(),
		grpc.FailOnNonTempDialError(true),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithReturnConnectionError(),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w", address, err)
	}
	return conn, nil
}

// cleanNamespace aborts the ingests left in the namespace and deletes its
// blobs (some carry a containerd.io/gc.root label, so deleting the lease
// alone would not free them), as containerd's integration test does.
func cleanNamespace(ctx context.Context, cs content.Store) error {
	statuses, err := cs.ListStatuses(ctx)
	if err != nil {
		return fmt.Errorf("list statuses: %w", err)
	}
	for _, st := range statuses {
		// A writer's Close only half-closes its stream, so the daemon
		// may still be closing that ingest (containerd then rewrites its
		// updatedat file, and an abort at that moment fails with
		// "directory not empty"): retry for up to a second.
		for try := 1; ; try++ {
			err := cs.Abort(ctx, st.Ref)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
			if try == 10 {
				return fmt.Errorf("abort %s: %w", st.Ref, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Collect first, delete after: no call is made while the List stream is open.
	var blobs []digest.Digest
	if err := cs.Walk(ctx, func(info content.Info) error {
		blobs = append(blobs, info.Digest)
		return nil
	}); err != nil {
		return fmt.Errorf("walk: %w", err)
	}
	for _, d := range blobs {
		if err := cs.Delete(ctx, d); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", d, err)
		}
	}
	return nil
}
