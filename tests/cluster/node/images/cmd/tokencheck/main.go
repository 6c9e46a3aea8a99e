// tokencheck: a test workload for the bed's node. Serves HTTP on
// $LISTEN_HOST:$PORT (all addresses, 8080):
//
//	/healthz  200 always (liveness)
//	/readyz   200 once READY_AFTER (default 2s) has passed since start and, with
//	          CALL_API set, the last API call with the pod's ServiceAccount token
//	          succeeded; 503 before
//	/api      makes the API call now and returns what the API server answered
//	/version  $VERSION (to see a Deployment rollout change it)
//
// With CALL_API set it GETs $API_PATH (default /api) every 5s from the API
// server that in-cluster clients use (https://$KUBERNETES_SERVICE_HOST:
// $KUBERNETES_SERVICE_PORT), with the token and CA the kubelet mounted
// (projected ServiceAccount token), and logs the result.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func getenv(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func callAPI(server, apiPath string) (int, string, error) {
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return 0, "", err
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return 0, "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return 0, "", fmt.Errorf("no certificate in %s/ca.crt", saDir)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequest("GET", server+apiPath, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body), nil
}

func main() {
	start := time.Now()
	readyAfter, err := time.ParseDuration(getenv("READY_AFTER", "2s"))
	if err != nil {
		log.Fatalf("READY_AFTER: %v", err)
	}
	server, apiPath := "", getenv("API_PATH", "/api")
	if os.Getenv("CALL_API") != "" {
		server = "https://" + net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	}
	var apiOK atomic.Bool
	if server == "" {
		apiOK.Store(true)
	} else {
		go func() {
			for {
				code, body, err := callAPI(server, apiPath)
				if err != nil {
					log.Printf("GET %s%s: %v", server, apiPath, err)
				} else {
					log.Printf("GET %s%s: %d %.200s", server, apiPath, code, body)
				}
				apiOK.Store(err == nil && code == http.StatusOK)
				time.Sleep(5 * time.Second)
			}
		}()
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if time.Since(start) < readyAfter || !apiOK.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, getenv("VERSION", "v1")) })
	http.HandleFunc("/api", func(w http.ResponseWriter, _ *http.Request) {
		if server == "" {
			http.Error(w, "CALL_API not set", http.StatusNotFound)
			return
		}
		code, body, err := callAPI(server, apiPath)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(code)
		io.WriteString(w, body)
	})
	srv := &http.Server{Addr: net.JoinHostPort(os.Getenv("LISTEN_HOST"), getenv("PORT", "8080"))}
	// SIGTERM (the kubelet stopping the pod): stop serving and exit 0.
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	log.Printf("tokencheck %s listening on %s (apiserver %q)", getenv("VERSION", "v1"), srv.Addr, server)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	log.Print("tokencheck: stopped")
}
