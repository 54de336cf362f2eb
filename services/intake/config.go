package intake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
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
	// DefaultRescindGrace is how long after a termination's effective time a
	// termination_rescinded still restores the worker.
	DefaultRescindGrace = 30 * 24 * time.Hour
	// DefaultScheduleInterval is how often Run looks for held events that are due and for
	// contracts that ended.
	DefaultScheduleInterval = time.Second
	// DefaultMaxSnapshotBytes caps a roster posted to /snapshots/{source}.
	DefaultMaxSnapshotBytes = 32 << 20
	// DefaultAPITimeout and DefaultAPIRetries apply to HRIS API fetches of thin formats.
	DefaultAPITimeout = 10 * time.Second
	DefaultAPIRetries = 2
	// DefaultReceiptRetention is how long a delivery's receipt is kept, and with it the
	// duplicate check by webhook-id and by content: longer than any HRIS retry schedule (days)
	// and a yearly roster re-export.
	DefaultReceiptRetention = 400 * 24 * time.Hour
	// DefaultEffectivePast and DefaultEffectiveFuture bound an event's effective_time around
	// now: 10 years back, 2 years ahead. Outside them a date is a data-entry slip (a year
	// 2062 for 2026), answered 422.
	DefaultEffectivePast   = 10 * 365 * 24 * time.Hour
	DefaultEffectiveFuture = 2 * 365 * 24 * time.Hour
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
	// RescindGrace: a termination_rescinded restores the worker only within this long after
	// the termination's effective time; later ones answer 422. Default 30 days.
	RescindGrace time.Duration
	// ScheduleInterval is how often Run fires held events that are due and looks for ended
	// contracts. Default 1s.
	ScheduleInterval time.Duration
	// Location is the time zone in which an end_date ends (at midnight after it). Default UTC.
	Location *time.Location
	// MaxSnapshotBytes caps a roster on POST /snapshots/{source} (413 above). Default 32 MiB.
	MaxSnapshotBytes int64
	// ReceiptRetention: receipts older than this are deleted (Run, hourly); until then a
	// re-delivery, or a re-send of the same content under a new webhook-id, is a duplicate.
	// Default 400 days.
	ReceiptRetention time.Duration
	// EffectivePast and EffectiveFuture bound effective_time around now (422 outside).
	// Defaults 10 years and 2 years.
	EffectivePast, EffectiveFuture time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// APIConfig is how a thin format's adapter reaches the HRIS API to fetch a worker's record.
// String and LogValue redact the token.
type APIConfig struct {
	// BaseURL of the API, e.g. https://api.bamboohr.com/api/gateway.php/acme/v1 or
	// https://api.hibob.com/v1.
	BaseURL string
	// User and Token are the HTTP Basic credentials (BambooHR: Token is the API key, sent as
	// the user name with the password "x"; HiBob: the service user id and its token).
	User  string
	Token string
	// Credential names where Token comes from (never the token), e.g. "api.token_env
	// BAMBOOHR_TOKEN", for the operator finding when the API refuses it.
	Credential string
	// Timeout bounds each attempt. Default 10s.
	Timeout time.Duration
	// Retries after a failed attempt (network error, 429 or 5xx). Default 2.
	Retries int
}

func (a APIConfig) String() string {
	return fmt.Sprintf("{BaseURL:%s User:%s Token:[redacted] Timeout:%s Retries:%d}", a.BaseURL, a.User, a.Timeout, a.Retries)
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
	// Formats with their own signature scheme (bamboohr, hibob) take the vendor's secret as
	// is instead of a "whsec_" secret.
	Format string
	// API is the HRIS API of thin formats (bamboohr, hibob).
	API APIConfig

	// now is the service clock, set by New for the adapter.
	now func() time.Time
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
	api := ""
	if c.API.BaseURL != "" {
		api = " API:" + c.API.String()
	}
	return fmt.Sprintf("{Secrets:[%d redacted] Tolerance:%s Format:%s%s}", len(c.Secrets), tol, f, api)
}

// GoString redacts the secrets for %#v.
func (c SourceConfig) GoString() string { return "intake.SourceConfig" + c.String() }

// LogValue redacts the secrets for slog.
func (c SourceConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("secrets", len(c.Secrets)),
		slog.String("tolerance", c.Tolerance.String()),
		slog.String("format", c.Format),
		slog.String("api", c.API.BaseURL),
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
	Settings settingsEntry          `yaml:"settings"`
	Sources  map[string]sourceEntry `yaml:"sources"`
}

type settingsEntry struct {
	RescindGrace     string `yaml:"rescind_grace"`
	ScheduleInterval string `yaml:"schedule_interval"`
	Timezone         string `yaml:"timezone"`
	MaxBodyBytes     int64  `yaml:"max_body_bytes"`
	MaxSnapshotBytes int64  `yaml:"max_snapshot_bytes"`
	ReceiptRetention string `yaml:"receipt_retention"`
	EffectivePast    string `yaml:"effective_past"`
	EffectiveFuture  string `yaml:"effective_future"`
}

type sourceEntry struct {
	Secrets    []string  `yaml:"secrets"`
	SecretsEnv []string  `yaml:"secrets_env"`
	Tolerance  string    `yaml:"tolerance"`
	Format     string    `yaml:"format"`
	API        *apiEntry `yaml:"api"`
}

type apiEntry struct {
	BaseURL  string `yaml:"base_url"`
	User     string `yaml:"user"`
	UserEnv  string `yaml:"user_env"`
	TokenEnv string `yaml:"token_env"`
	Timeout  string `yaml:"timeout"`
	Retries  *int   `yaml:"retries"`
}

// LoadConfig reads a sources file with its optional settings block; see ParseConfig.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("intake: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("intake: %s: %s", path, strings.TrimPrefix(err.Error(), "intake: "))
	}
	return c, nil
}

// ParseConfig decodes a sources file (see ParseSources) and its optional settings block:
//
//	settings:
//	  rescind_grace: 720h        # default 720h (30 days)
//	  schedule_interval: 1s      # default 1s
//	  timezone: America/Chicago  # where end dates end; default UTC
//	  max_body_bytes: 1048576    # default 1 MiB
//	  max_snapshot_bytes: 33554432
//	  receipt_retention: 9600h   # default 9600h (400 days): how long duplicates are caught
//	  effective_past: 87600h     # default 87600h (10 years): oldest effective_time taken
//	  effective_future: 17520h   # default 17520h (2 years): latest effective_time taken
func ParseConfig(b []byte) (Config, error) {
	f, err := decodeSourcesFile(b)
	if err != nil {
		return Config{}, err
	}
	srcs, err := parseSources(f)
	if err != nil {
		return Config{}, err
	}
	c := Config{Sources: srcs}
	st := f.Settings
	dur := func(field, v string, dst *time.Duration) error {
		if v == "" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("intake: settings.%s: %q is not a positive duration such as 720h", field, v)
		}
		*dst = d
		return nil
	}
	if err := dur("rescind_grace", st.RescindGrace, &c.RescindGrace); err != nil {
		return Config{}, err
	}
	if err := dur("schedule_interval", st.ScheduleInterval, &c.ScheduleInterval); err != nil {
		return Config{}, err
	}
	if err := dur("receipt_retention", st.ReceiptRetention, &c.ReceiptRetention); err != nil {
		return Config{}, err
	}
	if err := dur("effective_past", st.EffectivePast, &c.EffectivePast); err != nil {
		return Config{}, err
	}
	if err := dur("effective_future", st.EffectiveFuture, &c.EffectiveFuture); err != nil {
		return Config{}, err
	}
	if st.Timezone != "" {
		loc, err := time.LoadLocation(st.Timezone)
		if err != nil {
			return Config{}, fmt.Errorf("intake: settings.timezone: unknown time zone %q", st.Timezone)
		}
		c.Location = loc
	}
	if st.MaxBodyBytes < 0 || st.MaxSnapshotBytes < 0 {
		return Config{}, errors.New("intake: settings: byte limits must be positive")
	}
	c.MaxBodyBytes, c.MaxSnapshotBytes = st.MaxBodyBytes, st.MaxSnapshotBytes
	return c, nil
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
//	    format: canonical            # optional, default canonical; see Formats()
//	  bamboo:
//	    format: bamboohr             # vendor formats sign their own way: the vendor's key as is
//	    secrets_env: [BAMBOOHR_WEBHOOK_KEY]
//	    api:                         # thin formats (bamboohr, hibob) fetch the record here
//	      base_url: https://api.bamboohr.com/api/gateway.php/acme/v1
//	      token_env: BAMBOOHR_API_KEY  # the API credential, always from the environment
//	      # user: or user_env:       # HiBob: the service user id (BambooHR needs none)
//	      timeout: 10s               # per attempt, default 10s
//	      retries: 2                 # after a network error, 429 or 5xx; default 2
//
// Unknown fields are errors. Each source needs at least one secret; secrets_env names
// environment variables that must be set and non-empty. Prefer secrets_env (or a file readable
// only by the service) to secrets inline.
func ParseSources(b []byte) (map[string]SourceConfig, error) {
	f, err := decodeSourcesFile(b)
	if err != nil {
		return nil, err
	}
	return parseSources(f)
}

func decodeSourcesFile(b []byte) (sourcesFile, error) {
	var f sourcesFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return f, errors.New("intake: the file is empty; it needs a sources: map")
		}
		return f, fmt.Errorf("intake: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return f, errors.New("intake: the file holds more than one YAML document")
	}
	return f, nil
}

// minRawSecret is the shortest vendor secret accepted (formats with their own signature).
const minRawSecret = 16

func parseSources(f sourcesFile) (map[string]SourceConfig, error) {
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
		if sc.Format == "" {
			sc.Format = DefaultFormat
		}
		info, ok := lookupFormat(sc.Format)
		if !ok {
			return nil, fmt.Errorf("intake: %s.format: unknown format %q (known: %s)", where, sc.Format, strings.Join(Formats(), ", "))
		}
		checkSecret := func(s string) string {
			if info.ownSignature {
				if len(strings.TrimSpace(s)) < minRawSecret {
					return fmt.Sprintf("secret is too short for format %s; use the vendor's key (at least %d characters)", sc.Format, minRawSecret)
				}
				return ""
			}
			if _, err := webhook.ParseSecret(s); err != nil {
				return secretErr(err)
			}
			return ""
		}
		for i, s := range e.Secrets {
			if msg := checkSecret(s); msg != "" {
				return nil, fmt.Errorf("intake: %s.secrets[%d]: %s", where, i, msg)
			}
			sc.Secrets = append(sc.Secrets, s)
		}
		for i, env := range e.SecretsEnv {
			v := os.Getenv(env)
			if v == "" {
				return nil, fmt.Errorf("intake: %s.secrets_env[%d]: environment variable %s is not set or empty", where, i, env)
			}
			if msg := checkSecret(v); msg != "" {
				return nil, fmt.Errorf("intake: %s.secrets_env[%d]: environment variable %s: %s", where, i, env, msg)
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
		if sc.Tolerance == 0 {
			sc.Tolerance = DefaultTolerance
		}
		if e.API != nil {
			api, err := parseAPI(where+".api", *e.API)
			if err != nil {
				return nil, err
			}
			sc.API = api
		}
		// Let the format check its own settings (e.g. a thin format needs api).
		sc.now = time.Now
		if _, err := info.factory(name, sc); err != nil {
			return nil, fmt.Errorf("intake: %s: %w", where, err)
		}
		sc.now = nil
		out[name] = sc
	}
	return out, nil
}

func parseAPI(where string, e apiEntry) (APIConfig, error) {
	a := APIConfig{BaseURL: e.BaseURL, User: e.User, Timeout: DefaultAPITimeout, Retries: DefaultAPIRetries}
	u, err := url.Parse(e.BaseURL)
	if e.BaseURL == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return a, fmt.Errorf("intake: %s.base_url: %q is not an http(s) URL", where, e.BaseURL)
	}
	if e.UserEnv != "" {
		if e.User != "" {
			return a, fmt.Errorf("intake: %s: set user or user_env, not both", where)
		}
		if a.User = os.Getenv(e.UserEnv); a.User == "" {
			return a, fmt.Errorf("intake: %s.user_env: environment variable %s is not set or empty", where, e.UserEnv)
		}
	}
	if e.TokenEnv == "" {
		return a, fmt.Errorf("intake: %s.token_env: the API credential must come from an environment variable", where)
	}
	a.Credential = "api.token_env " + e.TokenEnv
	if a.Token = os.Getenv(e.TokenEnv); a.Token == "" {
		return a, fmt.Errorf("intake: %s.token_env: environment variable %s is not set or empty", where, e.TokenEnv)
	}
	if e.Timeout != "" {
		d, err := time.ParseDuration(e.Timeout)
		if err != nil || d <= 0 {
			return a, fmt.Errorf("intake: %s.timeout: %q is not a positive duration such as 10s", where, e.Timeout)
		}
		a.Timeout = d
	}
	if e.Retries != nil {
		if *e.Retries < 0 || *e.Retries > 10 {
			return a, fmt.Errorf("intake: %s.retries: %d is not between 0 and 10", where, *e.Retries)
		}
		a.Retries = *e.Retries
	}
	return a, nil
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
