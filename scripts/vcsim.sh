#!/usr/bin/env bash
# Builds vcsim, the vSphere simulator of govmomi, from Debian's packages
# (golang-go and golang-github-vmware-govmomi-dev) in GOPATH mode, without
# any download, and prints the path of the binary. It rebuilds only when the
# binary is missing or its main.go changed.
#
#   scripts/vcsim.sh            build if needed, print the binary's path
#   scripts/vcsim.sh run ARGS   build if needed, then exec vcsim with ARGS
#
# vcsim flags: -listen HOST:PORT (port 0 picks a free one), -username U,
# -password P (default: any non-empty pair), -tls (https with a self-signed
# certificate), -clusters N, -hosts N. On start it prints one line:
#   VCSIM_URL=<url> VCSIM_USER=<u> VCSIM_PASSWORD=<p> VCSIM_THUMBPRINT=<sha1 or empty>
# and serves until it is killed or its standard input closes.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VCSIM_CACHE_DIR="${BERTH_VCSIM_DIR:-/var/cache/berth-ci/vcsim}"
VCSIM_BINARY="$VCSIM_CACHE_DIR/vcsim"

ensure_debian_packages golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev

read -r -d '' VCSIM_MAIN <<'GO' || true
// Command vcsim starts govmomi's vCenter simulator (simulator.VPX) for berth's tests.
package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"time"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

// selfSignedCertificate makes a fresh RSA-2048 certificate for 127.0.0.1, as a
// vCenter's own one would be (govmomi's built-in test key has 1024 bits, which
// modern TLS stacks refuse).
func selfSignedCertificate() (tls.Certificate, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "vcsim", Organization: []string{"berth tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free one)")
	username := flag.String("username", "", "the only accepted user (empty: any non-empty user)")
	password := flag.String("password", "", "the only accepted password")
	useTLS := flag.Bool("tls", false, "serve https with a self-signed certificate")
	clusters := flag.Int("clusters", 1, "clusters in the datacenter")
	hosts := flag.Int("hosts", 2, "hosts per cluster")
	flag.Parse()

	model := simulator.VPX()
	model.Cluster = *clusters
	model.ClusterHost = *hosts
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim: creating the model:", err)
		os.Exit(1)
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	if *useTLS {
		certificate, err := selfSignedCertificate()
		if err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: making a certificate:", err)
			os.Exit(1)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{certificate}}
	}
	server := model.Service.NewServer()
	thumbprint := ""
	if *useTLS {
		der, err := base64.StdEncoding.DecodeString(simulator.Map.SessionManager().TLSCert())
		if err == nil {
			sum := sha1.Sum(der)
			hexed := make([]string, len(sum))
			for i, b := range sum {
				hexed[i] = fmt.Sprintf("%02X", b)
			}
			thumbprint = strings.Join(hexed, ":")
		}
	}
	user := server.URL.User.Username()
	pass, _ := server.URL.User.Password()
	plain := *server.URL
	plain.User = nil
	fmt.Printf("VCSIM_URL=%s VCSIM_USER=%s VCSIM_PASSWORD=%s VCSIM_THUMBPRINT=%s\n", plain.String(), user, pass, thumbprint)

	stdinClosed := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-signals:
	case <-stdinClosed:
	}
	server.Close()
	model.Remove()
}
GO

VCSIM_STAMP="$VCSIM_CACHE_DIR/main.go"
if [ ! -x "$VCSIM_BINARY" ] || ! printf '%s\n' "$VCSIM_MAIN" | cmp -s - "$VCSIM_STAMP"; then
  mkdir -p "$VCSIM_CACHE_DIR"
  build_gopath="$(mktemp -d)"
  trap 'rm -rf "$build_gopath"' EXIT
  mkdir -p "$build_gopath/src/berth-vcsim"
  printf '%s\n' "$VCSIM_MAIN" > "$build_gopath/src/berth-vcsim/main.go"
  log "building vcsim from Debian's govmomi into $VCSIM_BINARY"
  (
    cd "$build_gopath/src/berth-vcsim"
    GO111MODULE=off GOPATH="$build_gopath:/usr/share/gocode" GOCACHE="$VCSIM_CACHE_DIR/gocache" \
      GOFLAGS= go build -o "$VCSIM_BINARY.partial" .
  )
  mv -f "$VCSIM_BINARY.partial" "$VCSIM_BINARY"
  printf '%s\n' "$VCSIM_MAIN" > "$VCSIM_STAMP"
fi

if [ "${1:-}" = "run" ]; then
  shift
  exec "$VCSIM_BINARY" "$@"
fi
printf '%s\n' "$VCSIM_BINARY"
