package intake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/webhook"
)

func TestLoadSources(t *testing.T) {
	inline, envSecret := webhook.NewSecret(), webhook.NewSecret()
	t.Setenv("INTAKE_TEST_SECRET", envSecret)
	dir := t.TempDir()
	path := filepath.Join(dir, "sources.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(`sources:
  workday:
    secrets: [%q]
    secrets_env: [INTAKE_TEST_SECRET]
    tolerance: 2m
    format: canonical
  hr_feed-2:
    secrets_env: [INTAKE_TEST_SECRET]
`, inline)), 0o600)
	got, err := LoadSources(path)
	if err != nil {
		t.Fatal(err)
	}
	wd := got["workday"]
	if len(wd.Secrets) != 2 || wd.Secrets[0] != inline || wd.Secrets[1] != envSecret || wd.Tolerance != 2*time.Minute || wd.Format != "canonical" {
		t.Fatalf("workday = %#v", wd)
	}
	if f := got["hr_feed-2"]; f.Tolerance != 5*time.Minute || f.Format != FormatCanonical || len(f.Secrets) != 1 {
		t.Fatalf("defaults = %v", f)
	}
	// Printing or logging a SourceConfig never shows a secret.
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "cfg", wd)
	for _, s := range []string{fmt.Sprint(wd), fmt.Sprintf("%+v", wd), fmt.Sprintf("%#v", wd), fmt.Sprint(got), logged.String()} {
		if strings.Contains(s, inline) || strings.Contains(s, envSecret) || strings.Contains(s, strings.TrimPrefix(inline, "whsec_")) {
			t.Fatalf("secret printed: %s", s)
		}
	}

	cases := []struct{ name, body, want string }{
		{"unknown field", "sources:\n  a:\n    secret: [x]\n", "field secret not found"},
		{"unknown top-level field", "source:\n  a: {}\n", "field source not found"},
		{"bad name", "sources:\n  Work.Day:\n    secrets_env: [INTAKE_TEST_SECRET]\n", `sources.Work.Day: source name "Work.Day" must match [a-z0-9_-]+`},
		{"no secret", "sources:\n  a:\n    tolerance: 5m\n", "sources.a: needs at least one secret"},
		{"unset env", "sources:\n  a:\n    secrets_env: [INTAKE_TEST_UNSET]\n", "sources.a.secrets_env[0]: environment variable INTAKE_TEST_UNSET is not set"},
		{"bad secret", "sources:\n  a:\n    secrets: [whsec_short]\n", "sources.a.secrets[0]: "},
		{"bad tolerance", "sources:\n  a:\n    secrets_env: [INTAKE_TEST_SECRET]\n    tolerance: soon\n", `sources.a.tolerance: "soon" is not a positive duration`},
		{"negative tolerance", "sources:\n  a:\n    secrets_env: [INTAKE_TEST_SECRET]\n    tolerance: -1m\n", "sources.a.tolerance"},
		{"unknown format", "sources:\n  a:\n    secrets_env: [INTAKE_TEST_SECRET]\n    format: peoplesoft\n", `sources.a.format: unknown format "peoplesoft"`},
		{"empty", "", "empty"},
		{"no sources", "sources: {}\n", "no webhook sources"},
		{"wrong type", "sources:\n  a:\n    secrets: whsec_x\n", "cannot unmarshal"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".yaml")
			os.WriteFile(p, []byte(c.body), 0o600)
			_, err := LoadSources(p)
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an error naming %s and containing %q", err, p, c.want)
			}
			if strings.Contains(err.Error(), envSecret) || strings.Contains(err.Error(), "whsec_short") {
				t.Fatalf("error shows a secret: %v", err)
			}
		})
	}
	if _, err := LoadSources(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestBuildSourceErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  SourceConfig
		want string
	}{
		{"no secrets", SourceConfig{}, "no secrets"},
		{"bad secret", SourceConfig{Secrets: []string{"whsec_!!"}}, "secrets[0]"},
		{"unknown format", SourceConfig{Secrets: []string{webhook.NewSecret()}, Format: "peoplesoft"}, `unknown format "peoplesoft"`},
	}
	for _, c := range cases {
		if _, err := buildSource("src", c.cfg, time.Now); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "source src") {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if _, err := buildSource("Bad Name", SourceConfig{Secrets: []string{webhook.NewSecret()}}, time.Now); err == nil {
		t.Error("bad name accepted")
	}
}

// fixedAdapter is a source format for tests: it ignores the body.
type fixedAdapter struct{ err error }

func (f fixedAdapter) Decode(_ context.Context, d Delivery) (HREvent, error) {
	if f.err != nil {
		return HREvent{}, f.err
	}
	return HREvent{Type: "termination", Worker: HRWorker{WorkerID: strings.TrimSpace(string(d.Body))}}, nil
}

func init() {
	RegisterFormat("test_fixed", func(string, SourceConfig) (Adapter, error) { return fixedAdapter{}, nil })
	RegisterFormat("test_down", func(string, SourceConfig) (Adapter, error) {
		return fixedAdapter{err: errors.New("HRIS API unreachable")}, nil
	})
}

func TestAdapterRegistry(t *testing.T) {
	secret := webhook.NewSecret()
	h := newHarness(t, func(c *Config) {
		c.Sources["fixed"] = SourceConfig{Secrets: []string{secret}, Format: "test_fixed"}
		c.Sources["down"] = SourceConfig{Secrets: []string{secret}, Format: "test_down"}
	})
	// The adapter's body format is its own ("E77" is not JSON); the event is validated and
	// published like a canonical one.
	seedWorkers(t, h, "E77")
	if a := h.post(delivery{source: "fixed", id: "f1", body: "E77", secret: secret}); a.Status != http.StatusAccepted || a.Subject != "tenure.hr.leaver.E77" {
		t.Fatalf("fixed: %d %s", a.Status, a.Raw)
	}
	if a := h.post(delivery{source: "fixed", id: "f2", body: " ", secret: secret}); a.Status != http.StatusUnprocessableEntity || a.Field != "worker.worker_id" {
		t.Fatalf("fixed without id: %d %s", a.Status, a.Raw)
	}
	// An adapter failing for a reason that is not the sender's: 503 so the HRIS retries.
	if a := h.post(delivery{source: "down", id: "d1", body: "E1", secret: secret}); a.Status != http.StatusServiceUnavailable {
		t.Fatalf("down: %d %s", a.Status, a.Raw)
	}
	if got := strings.Join(Formats(), ","); !strings.Contains(got, "canonical") || !strings.Contains(got, "test_fixed") {
		t.Fatalf("Formats() = %s", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering a format twice did not panic")
		}
	}()
	RegisterFormat(FormatCanonical, func(string, SourceConfig) (Adapter, error) { return nil, nil })
}
