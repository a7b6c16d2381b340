# shellcheck shell=bash
# The pull benchmark's images as OCI layouts in $BENCH/pull-images, each built once:
# "single", one gzip layer of ~450 MB (the hash-sampled /usr subset of
# scripts/bench/layer-unpack's rootfs layer, ~15k entries, plus 150 MiB of random data);
# "five", the same files split into five gzip layers; "small", two gzip layers of a few MB
# (a tenth of those entries without the random data, then about 150 of them again), the size
# of a small distribution base image, where a pull's fixed costs show. Used by
# scripts/bench/pull, scripts/bench/pull-ctr2 and scripts/bench/userns.
#
#   pull_image_names: the images, in the order the benchmarks run them
#   build_pull_images: sets $images to their directory, building the missing ones
#   (needs $BENCH and $LIB, the layer_unpack.py helper).

pull_image_names=(small single five)

build_pull_images() {
  list=$BENCH/diff-change.list
  [ -s "$list" ] || python3 "$LIB" rootfs-list "$list"

  # The images as OCI layouts, each built once.
  images=$BENCH/pull-images
  local missing=() name
  for name in "${pull_image_names[@]}"; do
    [ -s "$images/$name/index.json" ] || missing+=("$name")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "pull-bench: building ${missing[*]} (once)" >&2
    mkdir -p "$images"
    for name in "${missing[@]}"; do rm -rf "${images:?}/$name"; done
    # The random data "single" and "five" end with.
    if [[ " ${missing[*]} " =~ " single "|" five " ]]; then
      head -c $((150 << 20)) /dev/urandom >"$images/random"
    fi
    python3 - "$list" "$images" "${missing[@]}" <<'PY'
import gzip, hashlib, json, os, subprocess, sys
lst, out, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3:])
names = [n for n in open(lst, 'rb').read().split(b'\0') if n]

def blob(layout, data_path=None, data=None):
    if data is None:
        data = open(data_path, 'rb').read()
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(f'{layout}/blobs/sha256', exist_ok=True)
    with open(f'{layout}/blobs/sha256/{d}', 'wb') as f:
        f.write(data)
    return 'sha256:' + d, len(data)

def layer(layout, parts, extra=None):
    tar = f'{out}/layer.tar'
    with open(f'{out}/part.list', 'wb') as f:
        f.write(b'\0'.join(parts) + b'\0')
    subprocess.run(['tar', '-C', '/', '--no-recursion', '--null', '-T', f'{out}/part.list',
                    '-cf', tar], check=True)
    if extra:
        subprocess.run(['tar', '-C', out, '--owner=0', '--group=0', '-rf', tar, extra], check=True)
    diff = 'sha256:' + hashlib.sha256(open(tar, 'rb').read()).hexdigest()
    subprocess.run(['gzip', '-n', '-f', '-5', tar], check=True)
    desc = blob(layout, tar + '.gz')
    os.remove(tar + '.gz')
    return diff, desc

def image(name, chunks, extra):
    if name not in wanted:
        return
    layout = f'{out}/{name}'
    diffs, layers = [], []
    for i, c in enumerate(chunks):
        d, (dg, size) = layer(layout, c, extra if i == 0 else None)
        diffs.append(d)
        layers.append({'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': dg, 'size': size})
    config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {},
                         'rootfs': {'type': 'layers', 'diff_ids': diffs}}).encode()
    cdg, csize = blob(layout, data=config)
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                           'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': cdg, 'size': csize},
                           'layers': layers}).encode()
    mdg, msize = blob(layout, data=manifest)
    open(f'{layout}/oci-layout', 'w').write('{"imageLayoutVersion":"1.0.0"}')
    index = {'schemaVersion': 2, 'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json',
             'digest': mdg, 'size': msize, 'annotations': {'org.opencontainers.image.ref.name': '1'}}]}
    open(f'{layout}/index.json', 'w').write(json.dumps(index))

image('single', [names], 'random')
n = (len(names) + 4) // 5
image('five', [names[i * n:(i + 1) * n] for i in range(5)], 'random')
image('small', [names[::10], names[5::97]], None)
PY
    rm -f "$images/random" "$images/part.list"
  fi
}
