package e2e

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/services/approval"
	"github.com/tenure-dev/tenure/services/intake"
)

type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck struct {
		Test    []string `yaml:"test"`
		Disable bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

var composeVar = regexp.MustCompile(`\$\{([A-Z0-9_]+)(:-([^}]*))?\}`)

// There is no Docker engine here, so the compose file is checked by parsing it: every tenure
// container runs a command `tenure` accepts, with an environment that `tenure serve` accepts
// and validates, config files that tenure's own loaders accept, and a working healthcheck.
func TestComposeFile(t *testing.T) {
	root := "../.."
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for name, svc := range doc.Services {
		if svc.Image != "tenure:dev" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range svc.Environment {
				env[k] = composeVar.ReplaceAllString(v, "$3")
			}
			// Files are mounted from deploy/config at /etc/tenure.
			mount := map[string]string{}
			for _, v := range svc.Volumes {
				parts := strings.Split(v, ":")
				if len(parts) >= 2 {
					mount[parts[1]] = filepath.Join(root, parts[0])
				}
			}
			local := func(p string) string {
				for in, out := range mount {
					if rest, ok := strings.CutPrefix(p, in+"/"); ok {
						return filepath.Join(out, rest)
					}
				}
				return p
			}
			for k, v := range env {
				t.Setenv(k, v)
			}
			switch svc.Command[0] {
			case "setup":
				if env["TENURE_DATABASE_URL"] == "" || env["TENURE_NATS_USER"] == "" {
					t.Fatalf("setup needs an admin database URL and NATS user: %v", env)
				}
				return
			case "serve":
			default:
				t.Fatalf("unknown tenure command %q", svc.Command[0])
			}
			cfg, err := app.ParseServe(svc.Command[1:], func(k string) string { return env[k] }, io.Discard)
			if err != nil {
				t.Fatalf("tenure %v rejects its command or environment: %v", svc.Command, err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("tenure %v: %v", svc.Command, err)
			}
			targets, _ := cfg.Services()
			for _, s := range targets {
				served[s] = true
			}
			if _, err := authn.Load(local(cfg.TokensFile)); err != nil {
				t.Errorf("tokens file: %v", err)
			}
			if cfg.WebhookSources != "" {
				if _, err := intake.LoadSources(local(cfg.WebhookSources)); err != nil {
					t.Errorf("webhook sources: %v", err)
				}
			}
			if cfg.Policy != "" {
				if _, err := approval.LoadPolicy(local(cfg.Policy)); err != nil {
					t.Errorf("policy: %v", err)
				}
			}
			if cfg.Connectors != "" {
				cfgs, err := connector.LoadConfigs(local(cfg.Connectors))
				if err != nil {
					t.Fatalf("connectors: %v", err)
				}
				for i := range cfgs {
					c, err := cfgs[i].Open(context.Background())
					if err != nil {
						t.Errorf("connector %s: %v", cfgs[i].Name, err)
						continue
					}
					connector.Close(c)
				}
			}
			hc := svc.Healthcheck.Test
			if len(hc) < 3 || hc[1] != "tenure" || hc[2] != "healthcheck" {
				t.Errorf("healthcheck %v does not use `tenure healthcheck`", hc)
			}
			if svc.DependsOn["setup"].Condition != "service_completed_successfully" {
				t.Errorf("does not wait for setup")
			}
		})
	}
	for _, s := range app.Targets {
		if !served[s] {
			t.Errorf("no container runs --target=%s", s)
		}
	}
	if !slices.Contains(keys(doc.Services), "nats") || !slices.Contains(keys(doc.Services), "postgres") {
		t.Error("compose lacks nats or postgres")
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
