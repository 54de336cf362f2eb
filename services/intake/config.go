package intake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/pkg/webhook"
)

// Defaults.
const (
	DefaultMaxBodyBytes   = 1 << 20 // 1 MiB
	DefaultTolerance      = webhook.DefaultTolerance
	DefaultFormat         = FormatCanonical
	DefaultPublishTimeout = 10 * time.Second
)

// Config configures the intake service. The zero value is usable: no sources (every webhook
// answers 404) and the defaults above.
type Config struct {
	// Sources are the webhook senders, by name. The name is the last path segment of
	// POST /webhooks/{source} and must match [a-z0-9_-]+.
	Sources map[string]SourceConfig
	// MaxBodyBytes caps a webhook body; larger bodies answer 413. Default 1 MiB.
	MaxBodyBytes int64
	// PublishTimeout bounds the wait for JetStream's PubAck. Default 10s.
	PublishTimeout time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// SourceConfig is one webhook source.
//
// String, GoString and LogValue redact the secrets, so printing or logging a SourceConfig
// never reveals them.
type SourceConfig struct {
	// Secrets are Standard Webhooks secrets ("whsec_<base64>"). A delivery signed with any
	// of them is accepted, so a secret is rotated by adding the new one, switching the
	// sender, and then removing the old one.
	Secrets []string
	// Tolerance is how far the webhook-timestamp may be from now. Default 5m.
	Tolerance time.Duration
	// Format names the adapter that decodes the body (see Formats). Default "canonical".
	Format string
}

func (c SourceConfig) String() string {
	tol := c.Tolerance
	if tol == 0 {
		tol = DefaultTolerance
	}
	f := c.Format
	if f == "" {
		f = DefaultFormat
	}
	return fmt.Sprintf("{Secrets:[%d redacted] Tolerance:%s Format:%s}", len(c.Secrets), tol, f)
}

// GoString redacts the secrets for %#v.
func (c SourceConfig) GoString() string { return "intake.SourceConfig" + c.String() }

// LogValue redacts the secrets for slog.
func (c SourceConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("secrets", len(c.Secrets)),
		slog.String("tolerance", c.Tolerance.String()),
		slog.String("format", c.Format),
	)
}

var sourceNameRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// maxSourceName keeps source names usable as event-id parts and subject-free labels.
const maxSourceName = 64

func checkSourceName(name string) error {
	if !sourceNameRE.MatchString(name) || len(name) > maxSourceName {
		return fmt.Errorf("source name %q must match [a-z0-9_-]+ (at most %d characters)", name, maxSourceName)
	}
	return nil
}

// The YAML file format, decoded strictly.
type sourcesFile struct {
	Sources map[string]sourceEntry `yaml:"sources"`
}

type sourceEntry struct {
	Secrets    []string `yaml:"secrets"`
	SecretsEnv []string `yaml:"secrets_env"`
	Tolerance  string   `yaml:"tolerance"`
	Format     string   `yaml:"format"`
}

// LoadSources reads a webhook sources file; see ParseSources for the format. Errors name the
// file and the field; they never contain a secret.
func LoadSources(path string) (map[string]SourceConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	m, err := ParseSources(b)
	if err != nil {
		return nil, fmt.Errorf("intake: %s: %s", path, strings.TrimPrefix(err.Error(), "intake: "))
	}
	return m, nil
}

// ParseSources decodes a webhook sources file:
//
//	sources:
//	  workday:                       # name: [a-z0-9_-]+, used in POST /webhooks/workday
//	    secrets: ["whsec_..."]       # inline secrets, and/or
//	    secrets_env: [WORKDAY_WEBHOOK_SECRET, WORKDAY_WEBHOOK_SECRET_NEXT]
//	    tolerance: 5m                # optional, default 5m
//	    format: canonical            # optional, default canonical
//
// Unknown fields are errors. Each source needs at least one secret; secrets_env names
// environment variables that must be set and non-empty. Prefer secrets_env (or a file readable
// only by the service) to secrets inline.
func ParseSources(b []byte) (map[string]SourceConfig, error) {
	var f sourcesFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("intake: the file is empty; it needs a sources: map")
		}
		return nil, fmt.Errorf("intake: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("intake: the file holds more than one YAML document")
	}
	if len(f.Sources) == 0 {
		return nil, errors.New("intake: sources: no webhook sources defined")
	}
	names := make([]string, 0, len(f.Sources))
	for n := range f.Sources {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make(map[string]SourceConfig, len(f.Sources))
	for _, name := range names {
		e := f.Sources[name]
		where := "sources." + name
		if err := checkSourceName(name); err != nil {
			return nil, fmt.Errorf("intake: %s: %w", where, err)
		}
		sc := SourceConfig{Format: e.Format}
		for i, s := range e.Secrets {
			if _, err := webhook.ParseSecret(s); err != nil {
				return nil, fmt.Errorf("intake: %s.secrets[%d]: %s", where, i, secretErr(err))
			}
			sc.Secrets = append(sc.Secrets, s)
		}
		for i, env := range e.SecretsEnv {
			v := os.Getenv(env)
			if v == "" {
				return nil, fmt.Errorf("intake: %s.secrets_env[%d]: environment variable %s is not set or empty", where, i, env)
			}
			if _, err := webhook.ParseSecret(v); err != nil {
				return nil, fmt.Errorf("intake: %s.secrets_env[%d]: environment variable %s: %s", where, i, env, secretErr(err))
			}
			sc.Secrets = append(sc.Secrets, v)
		}
		if len(sc.Secrets) == 0 {
			return nil, fmt.Errorf("intake: %s: needs at least one secret in secrets or secrets_env", where)
		}
		if e.Tolerance != "" {
			d, err := time.ParseDuration(e.Tolerance)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("intake: %s.tolerance: %q is not a positive duration such as 5m", where, e.Tolerance)
			}
			sc.Tolerance = d
		}
		if sc.Format == "" {
			sc.Format = DefaultFormat
		}
		if _, ok := lookupFormat(sc.Format); !ok {
			return nil, fmt.Errorf("intake: %s.format: unknown format %q (known: %s)", where, sc.Format, strings.Join(Formats(), ", "))
		}
		if sc.Tolerance == 0 {
			sc.Tolerance = DefaultTolerance
		}
		out[name] = sc
	}
	return out, nil
}

// secretErr describes a bad secret without quoting it (webhook.ParseSecret's errors do not,
// but keep it that way whatever they become).
func secretErr(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "base64"):
		return `not a valid "whsec_<base64>" secret`
	case strings.Contains(msg, "bytes"):
		return "secret is too short; use at least 24 random bytes (webhook.NewSecret)"
	default:
		return "invalid secret"
	}
}
