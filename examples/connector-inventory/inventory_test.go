package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/remote"
)

const token = "inventory-test-token-c0ffee"

// binary is the connector built once for all tests, in a temporary directory.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "connector-inventory-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "connector-inventory")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is the connector running as its own OS process.
type process struct {
	addr string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs strings.Builder
	done chan struct{} // closed when its stderr is drained
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

var listening = regexp.MustCompile(`msg="serving connector" addr=(\S+)`)

// start runs the connector on a free loopback port (it listens on port 0 and logs the port
// it got) with the inventory at data, and stops it when the test ends, checking that it
// stops cleanly.
func start(t *testing.T, data string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"-listen", "127.0.0.1:0", "-data", data}, args...)...)
	cmd.Env = append(os.Environ(), "INVENTORY_TOKEN="+token)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	t.Cleanup(func() { p.stop(t) })
	select {
	case p.addr = <-addr:
	case <-p.done:
		cmd.Wait()
		t.Fatalf("connector exited before serving:\n%s", p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("connector did not start serving in 30s:\n%s", p.output())
	}
	return p
}

// stop sends SIGTERM and expects a clean exit, as tenure's deployments would.
func (p *process) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { <-p.done; exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("connector exited with %v after SIGTERM:\n%s", err, p.output())
		}
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-exited
		t.Errorf("connector did not stop within 20s of SIGTERM:\n%s", p.output())
	}
}

// open connects to the connector the way tenure does: the "grpc" type from a config.
func open(t *testing.T, addr, tok string) (connector.Connector, error) {
	t.Helper()
	c, err := connector.Open(t.Context(), remote.TypeName, fmt.Appendf(nil, "address: %s\ninsecure: true\ntoken: %s\ntimeout: 10s\n", addr, tok))
	if err == nil {
		t.Cleanup(func() { connector.Close(c) })
	}
	return c, err
}

func mustOpen(t *testing.T, addr string) connector.Connector {
	t.Helper()
	c, err := open(t, addr, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConformanceOverGRPC(t *testing.T) {
	// A page size of 2 makes the suite's three accounts span pages.
	p := start(t, filepath.Join(t.TempDir(), "inventory.json"), "-page-size", "2", "-entitlements", "reports,billing")
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			c, err := open(t, p.addr, token)
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, List: true, Profile: true,
		},
		Entitlements: []string{"reports", "billing"},
	})
}

// The client implements what the process reports, and no more: the inventory has no
// sessions.
func TestCapabilitiesComeFromTheProcess(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "inventory.json"))
	c := mustOpen(t, p.addr)
	want := []string{"get", "create", "disable", "enable", "delete", "entitlements", "list"}
	if got := connector.Capabilities(c); !slices.Equal(got, want) {
		t.Fatalf("Capabilities = %v, want %v", got, want)
	}
	if _, ok := c.(connector.SessionRevoker); ok {
		t.Fatal("the client claims SessionRevoker, which the inventory does not implement")
	}
}

// A disable through tenure lands in the target itself and outlives the connector process.
func TestDisableLandsInTheFile(t *testing.T) {
	data := filepath.Join(t.TempDir(), "inventory.json")
	p := start(t, data)
	c := mustOpen(t, p.addr)
	acc, err := c.(connector.Creator).CreateAccount(t.Context(), connector.AccountSpec{
		WorkerID: "w-1001", Username: "ada", Email: "ada@clinic.example", Entitlements: []string{"reports"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.(connector.Disabler).DisableAccount(t.Context(), connector.AccountRef{ID: acc.ID}); err != nil {
		t.Fatal(err)
	}

	// Read the target directly, not through the connector.
	raw, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Accounts []map[string]any `json:"accounts"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Accounts) != 1 || f.Accounts[0]["username"] != "ada" || f.Accounts[0]["disabled"] != true || f.Accounts[0]["worker_id"] != "w-1001" {
		t.Fatalf("the inventory file holds %s, want ada disabled with her worker id", raw)
	}

	p.stop(t)
	again := start(t, data)
	got, err := mustOpen(t, again.addr).GetAccount(t.Context(), connector.AccountRef{Username: "ada"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != acc.ID || got.State != connector.StateDisabled || !slices.Equal(got.Entitlements, []string{"reports"}) {
		t.Fatalf("after a restart GetAccount = %+v, want %s disabled with [reports]", got, acc.ID)
	}
}

// Each error kind keeps its meaning across the process boundary, so the host's retry
// policy treats this connector like a built-in one.
func TestErrorKindsCrossTheProcessBoundary(t *testing.T) {
	data := filepath.Join(t.TempDir(), "inventory.json")
	p := start(t, data)
	c := mustOpen(t, p.addr)
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "grace"})
	if err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID}

	t.Run("not found", func(t *testing.T) {
		err := c.(connector.Disabler).DisableAccount(ctx, connector.AccountRef{Username: "nobody"})
		if !errors.Is(err, connector.ErrNotFound) || connector.KindOf(err) != connector.KindNotFound || !strings.Contains(err.Error(), `username "nobody"`) {
			t.Fatalf("DisableAccount(nobody) = %v, want not found naming the username", err)
		}
	})
	t.Run("permanent", func(t *testing.T) {
		err := c.(connector.EntitlementGranter).GrantEntitlement(ctx, ref, "root")
		if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), `entitlement "root" is not managed here`) {
			t.Fatalf("GrantEntitlement(root) = %v (%v), want permanent naming the entitlement", err, connector.KindOf(err))
		}
		_, err = c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "two words"})
		if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), `username "two words"`) {
			t.Fatalf("CreateAccount(two words) = %v (%v), want permanent naming the username", err, connector.KindOf(err))
		}
	})
	t.Run("retryable with Retry-After", func(t *testing.T) {
		// Another tool holds the inventory's write lock.
		lock, err := os.OpenFile(data+".lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close()
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		err = c.(connector.Disabler).DisableAccount(ctx, ref)
		if connector.KindOf(err) != connector.KindRetryable || connector.RetryAfterOf(err) != lockRetryAfter || !strings.Contains(err.Error(), "locked by another writer") {
			t.Fatalf("DisableAccount while locked = %v (%v, retry after %v), want retryable after %v", err, connector.KindOf(err), connector.RetryAfterOf(err), lockRetryAfter)
		}
		// Reads need no lock, and the failed disable changed nothing.
		if got, err := c.GetAccount(ctx, ref); err != nil || got.State != connector.StateEnabled {
			t.Fatalf("GetAccount while locked = %+v, %v; want enabled", got, err)
		}
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
			t.Fatal(err)
		}
		if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
			t.Fatalf("DisableAccount after the lock was released: %v", err)
		}
	})
	t.Run("damaged file is permanent", func(t *testing.T) {
		if err := os.WriteFile(data, []byte(`{"accounts": [], "surprise": 1}`), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := c.GetAccount(ctx, ref)
		if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "is not a valid inventory") {
			t.Fatalf("GetAccount of a damaged file = %v (%v), want permanent", err, connector.KindOf(err))
		}
	})
}

func TestWrongTokenIsRejected(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "inventory.json"))
	_, err := open(t, p.addr, "guessed-token")
	if err == nil || connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "wrong bearer token") {
		t.Fatalf("open with a wrong token = %v, want a permanent error", err)
	}
	// The process logs the rejection on its own schedule; wait for the line, then check that
	// no token is in what it wrote.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.output(), "wrong bearer token") {
		if time.Now().After(deadline) {
			t.Fatalf("the connector did not log the rejected call:\n%s", p.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(p.output(), "guessed-token") || strings.Contains(p.output(), token) {
		t.Fatalf("the connector logged a token:\n%s", p.output())
	}
}

// Bad setups stop the process at once with a message naming what is wrong.
func TestBadSetupFailsClearly(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no token", []string{"INVENTORY_TOKEN="}, nil, "bearer token (-token-file or $INVENTORY_TOKEN): secret: env INVENTORY_TOKEN is empty"},
		{"missing token file", nil, []string{"-token-file", "/nonexistent/token"}, "bearer token (-token-file or $INVENTORY_TOKEN): secret: open /nonexistent/token"},
		{"plaintext off loopback", nil, []string{"-listen", "0.0.0.0:0"}, "is not a loopback address: serve TLS (WithTLS)"},
		{"cert without key", nil, []string{"-tls-cert", "/x.pem"}, "-tls-cert and -tls-key go together"},
		{"bad page size", nil, []string{"-page-size", "0"}, "page size 0: want at least 1"},
		{"unknown flag", nil, []string{"-port", "7400"}, "flag provided but not defined: -port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-listen", "127.0.0.1:0", "-data", filepath.Join(t.TempDir(), "inventory.json")}, tt.args...)
			cmd := exec.Command(binary, args...)
			cmd.Env = append(append(os.Environ(), "INVENTORY_TOKEN="+token), tt.env...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			out, err := runUntil(ctx, cmd)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit = %v, want status 1; output:\n%s", err, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output does not say %q:\n%s", tt.want, out)
			}
		})
	}
}

// runUntil runs cmd and returns its combined output, killing it when ctx ends.
func runUntil(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return out.String(), ctx.Err()
	}
}
