// mkimage: writes a one-layer container image holding static binaries as a
// tar that `ctr images import` (and `docker load`/`podman load`) accept: an OCI
// image layout plus a docker-save manifest.json, deterministic for given inputs.
//
//	mkimage -ref localhost/bed/pause:1 -out pause.tar -user 65535 -entrypoint /pause ./pause=/pause
//
// Each trailing argument is SRC=DEST: a file from the host placed at DEST, mode 0755.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

type blob struct {
	digest string
	data   []byte
}

func newBlob(b []byte) blob {
	return blob{digest: fmt.Sprintf("sha256:%x", sha256.Sum256(b)), data: b}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func main() {
	ref := flag.String("ref", "", "image reference, e.g. localhost/bed/pause:1")
	out := flag.String("out", "", "output tar")
	user := flag.String("user", "", "image user (uid[:gid])")
	entry := flag.String("entrypoint", "", "entrypoint, comma-separated argv")
	flag.Parse()
	if *ref == "" || *out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	epoch := time.Unix(0, 0).UTC()

	// The layer: parent directories, then each file.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	files := flag.Args()
	sort.Strings(files)
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			log.Fatalf("want SRC=/DEST, got %q", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			log.Fatal(err)
		}
		var parents []string
		for d := path.Dir(dst); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !dirs[d] {
				dirs[d] = true
				must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}))
			}
		}
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst[1:], Mode: 0o755, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}))
		_, err = tw.Write(data)
		must(err)
	}
	must(tw.Close())
	l := newBlob(layer.Bytes())

	var entrypoint []string
	if *entry != "" {
		entrypoint = strings.Split(*entry, ",")
	}
	cfg := newBlob(mustJSON(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"User":       *user,
			"Entrypoint": entrypoint,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{l.digest}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "tests/cluster/node/images mkimage"}},
	}))
	man := newBlob(mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.digest, "size": len(cfg.data)},
		"layers":        []map[string]any{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.digest, "size": len(l.data)}},
	}))
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man.digest, "size": len(man.data),
			"annotations": map[string]string{"io.containerd.image.name": *ref, "org.opencontainers.image.ref.name": *ref},
		}},
	})
	blobPath := func(b blob) string { return "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:") }
	dockerManifest := mustJSON([]map[string]any{{
		"Config": blobPath(cfg), "RepoTags": []string{*ref}, "Layers": []string{blobPath(l)},
	}})

	f, err := os.Create(*out)
	must(err)
	ow := tar.NewWriter(f)
	put := func(name string, data []byte) {
		must(ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}))
		_, err := ow.Write(data)
		must(err)
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		must(ow.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}))
	}
	put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	put("index.json", index)
	put("manifest.json", dockerManifest)
	for _, b := range []blob{l, cfg, man} {
		put(blobPath(b), b.data)
	}
	must(ow.Close())
	must(f.Close())
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
