package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The `tenure dev` binary prints its endpoints, serves, and on SIGTERM shuts down cleanly
// and stops the PostgreSQL cluster it started.
func TestDevBinaryStopsCleanlyOnSignal(t *testing.T) {
	tenure, _ := binaries(t)
	dir := t.TempDir()
	httpAddr := freeAddr(t)
	cmd := exec.Command(tenure, "dev", "--data-dir", dir, "--http-addr", httpAddr, "--grpc-addr", freeAddr(t), "--nats-port", "-1")
	var stdout, stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	}()
	eventually(t, 60*time.Second, "tenure dev ready", func() error {
		out, err := exec.Command(tenure, "healthcheck", "--url", "http://"+httpAddr+"/readyz").CombinedOutput()
		if err != nil {
			return &waitErr{string(out) + stderr.String()}
		}
		return nil
	})
	for _, want := range []string{"webhooks   POST http://" + httpAddr + "/webhooks/demo", "gRPC", "NATS       nats://127.0.0.1:", "Postgres"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("startup output lacks %q:\n%s", want, stdout.String())
		}
	}
	pidFile := filepath.Join(dir, "postgres", "data", "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("postgres not running under the data dir: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tenure dev exited with %v:\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("tenure dev did not stop within 60s of SIGTERM")
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("postgres still running after tenure dev stopped: %v", err)
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("no clean-stop log line:\n%s", stderr.String())
	}
}

type waitErr struct{ s string }

func (e *waitErr) Error() string { return e.s }
