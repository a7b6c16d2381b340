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
// (leases/proxy) and deleted when the test is done.
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

		test := atomic.AddUint64(&testSeq, 1)
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
			log.G(ctx).Debugf("namespace %s, lease %s", ns, l.ID)
			done := func(context.Context) error {
				if err := cleanNamespace(nsctx, cs); err != nil {
					return fmt.Errorf("clean namespace %s: %w", ns, err)
				}
				return lm.Delete(nsctx, l)
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
		if err := cs.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("abort %s: %w", st.Ref, err)
		}
	}
	return cs.Walk(ctx, func(info content.Info) error {
		if err := cs.Delete(ctx, info.Digest); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", info.Digest, err)
		}
		return nil
	})
}
