package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/webhook"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds tenure and tenurectl once per test binary.
func binaries(t *testing.T) (tenure, tenurectl string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tenure-e2e-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range []string{"tenure", "tenurectl"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b), "github.com/tenure-dev/tenure/cmd/"+b)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "tenure"), filepath.Join(binDir, "tenurectl")
}

// isFlagSet says whether the command line set the flag (a test then leaves it alone).
func isFlagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// hrEvent is the canonical webhook body.
func hrEvent(typ, worker, job, email string) []byte {
	w := map[string]string{"worker_id": worker, "worker_type": "employee"}
	if job != "" {
		w["job_code"] = job
	}
	if email != "" {
		w["email"] = email
	}
	b, _ := json.Marshal(map[string]any{"type": typ, "worker": w})
	return b
}

// postWebhook signs body with secret (Standard Webhooks) and posts it.
func postWebhook(t *testing.T, url, secret, id string, body []byte) (int, map[string]any) {
	return postWebhookB(t, url, secret, id, body)
}

func postWebhookB(t testing.TB, url, secret, id string, body []byte) (int, map[string]any) {
	t.Helper()
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, fmt.Sprint(now.Unix()))
	req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, id, now, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(raw, &out)
	if out == nil {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

func dial(t testing.TB, addr, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: token, Insecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func waitReady(t *testing.T, url string, proc *exec.Cmd, stderr *bytes.Buffer) {
	t.Helper()
	eventually(t, 60*time.Second, "ready "+url, func() error {
		if proc.ProcessState != nil {
			t.Fatalf("process exited: %s", stderr.String())
		}
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
}

// safeBuffer is a bytes.Buffer safe for a process writing while the test reads.
type safeBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.String()
}

// quietLogger keeps benchmark output to the figures.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// linkFound links an account that exists in a target to a worker over gRPC, as an operator
// does for an account reconciliation found; it waits for the provisioner to know the worker
// (its joiner may still be on its way).
func linkFound(tb testing.TB, prov provisionerv1.ProvisioningServiceClient, worker, conn, username string) {
	tb.Helper()
	eventually(tb, 30*time.Second, fmt.Sprintf("link %s/%s to %s", conn, username, worker), func() error {
		_, err := prov.LinkAccount(context.Background(), &provisionerv1.LinkAccountRequest{Connector: conn, WorkerId: worker, Username: username,
			Reason: "e2e: found by reconciliation, confirmed with the worker's manager"})
		if err != nil && (status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "not known to tenure")) {
			tb.Fatalf("link %s/%s to %s: %v", conn, username, worker, err)
		}
		return err
	})
}
