// Command applyclient applies one layer blob through the Diff service of a
// containerd-compatible daemon, over its gRPC API, the way containerd's unpacker asks its
// differ: the blob in the daemon's content store, a new active snapshot prepared on no
// parent, then one Diff.Apply of the blob's descriptor onto the snapshot's mounts. Only
// the Apply call is timed; it prints "SECONDS DIFFID".
//
// scripts/bench/layer-unpack runs it against containerd 1.6 (its native snapshotter and
// walking differ) and against Strata's daemon (its native snapshotter and differ), so both
// appliers are reached through the same client. The blob is written once per daemon
// (with -store-only, or untimed before the Apply: a pull would have done it), checked by
// the store against its digest. The
// snapshot is left active under a lease that expires after a day: the benchmark deletes
// the daemons' roots after its batch.
//
// Built against Debian bookworm's packaged containerd 1.6 source in GOPATH mode, offline,
// by scripts/e2e/go-build.sh.
//
//	applyclient -address SOCK -snapshotter native -blob FILE -media-type TYPE -key KEY
//	applyclient -address SOCK -blob FILE -media-type TYPE -store-only
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/content"
	contentproxy "github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/leases"
	leasesproxy "github.com/containerd/containerd/leases/proxy"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "the daemon's unix socket")
	snapshotter := flag.String("snapshotter", "native", "snapshotter to prepare the snapshot in")
	blob := flag.String("blob", "", "the layer blob")
	mediaType := flag.String("media-type", ocispec.MediaTypeImageLayerGzip, "the blob's media type")
	key := flag.String("key", "", "the new snapshot's key")
	storeOnly := flag.Bool("store-only", false, "only write the blob into the content store")
	flag.Parse()
	if *address == "" || *blob == "" || (*key == "") != *storeOnly {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*address, *snapshotter, *blob, *mediaType, *key); err != nil {
		fmt.Fprintln(os.Stderr, "applyclient:", err)
		os.Exit(1)
	}
}

func run(address, snapshotter, blob, mediaType, key string) error {
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, dialer.DialAddress(address),
		grpc.WithBlock(),
		grpc.WithInsecure(),
		grpc.FailOnNonTempDialError(true),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	if err != nil {
		return fmt.Errorf("dial %q: %w", address, err)
	}
	defer conn.Close()

	lease, err := leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn)).
		Create(ctx, leases.WithRandomID(), leases.WithExpiration(24*time.Hour))
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	ctx = leases.WithLease(ctx, lease.ID)

	desc, err := storeBlob(ctx, contentproxy.NewContentStore(contentapi.NewContentClient(conn)), blob, mediaType)
	if err != nil || key == "" {
		return err
	}
	prepared, err := snapshotsapi.NewSnapshotsClient(conn).Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{
		Snapshotter: snapshotter,
		Key:         key,
	})
	if err != nil {
		return fmt.Errorf("prepare %s: %w", key, err)
	}

	start := time.Now()
	applied, err := diffapi.NewDiffClient(conn).Apply(ctx, &diffapi.ApplyRequest{
		Diff: &types.Descriptor{
			MediaType: desc.MediaType,
			Digest:    desc.Digest,
			Size_:     desc.Size,
		},
		Mounts: prepared.Mounts,
	})
	took := time.Since(start)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	fmt.Printf("%.3f %s\n", took.Seconds(), applied.Applied.Digest)
	return nil
}

// storeBlob writes the blob into the content store unless it is there already.
func storeBlob(ctx context.Context, cs content.Store, path, mediaType string) (ocispec.Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	dgst, err := digest.FromReader(f)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	st, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: dgst, Size: st.Size()}
	if _, err := cs.Info(ctx, dgst); err == nil {
		return desc, nil
	} else if !errdefs.IsNotFound(err) {
		return desc, fmt.Errorf("content info: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		return desc, err
	}
	if err := content.WriteBlob(ctx, cs, "bench-"+dgst.Encoded(), f, desc); err != nil {
		return desc, fmt.Errorf("write blob: %w", err)
	}
	return desc, nil
}
