package connector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const hunter2 = "postgres://admin:hunter2@db/ehr"

func TestSecretRedacted(t *testing.T) {
	s := SecretValue(hunter2)
	cfg := struct {
		URL  Secret
		Name string
	}{s, "ehr"}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("open", "url", s, "cfg", cfg)
	ym, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v":   fmt.Sprintf("%v", s),
		"%s":   fmt.Sprintf("%s", s),
		"%+v":  fmt.Sprintf("%+v", cfg),
		"%#v":  fmt.Sprintf("%#v", cfg),
		"slog": logs.String(),
		"yaml": string(ym),
		"json": string(js),
	}
	for how, out := range outputs {
		if strings.Contains(out, "hunter2") {
			t.Errorf("%s leaks the secret: %s", how, out)
		}
		if !strings.Contains(out, redacted) {
			t.Errorf("%s does not say it redacted: %s", how, out)
		}
	}
	if got, err := s.Resolve(); err != nil || got != hunter2 {
		t.Errorf("Resolve = %q, %v", got, err)
	}
}

func TestSecretSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "url")
	if err := os.WriteFile(file, []byte(hunter2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TENURE_TEST_SECRET", hunter2)
	t.Setenv("TENURE_TEST_EMPTY", "")

	tests := []struct {
		name    string
		yaml    string
		source  string
		want    string
		wantErr string
	}{
		{name: "plain", yaml: `url: ` + hunter2, source: "value", want: hunter2},
		{name: "value", yaml: `url: {value: "` + hunter2 + `"}`, source: "value", want: hunter2},
		{name: "env", yaml: `url: {env: TENURE_TEST_SECRET}`, source: "env TENURE_TEST_SECRET", want: hunter2},
		{name: "file trims newline", yaml: `url: {file: ` + file + `}`, source: "file " + file, want: hunter2},
		{name: "env unset", yaml: `url: {env: TENURE_TEST_NOPE}`, source: "env TENURE_TEST_NOPE", wantErr: "TENURE_TEST_NOPE is not set"},
		{name: "env empty", yaml: `url: {env: TENURE_TEST_EMPTY}`, source: "env TENURE_TEST_EMPTY", wantErr: "is empty"},
		{name: "file missing", yaml: `url: {file: ` + file + `.nope}`, source: "file " + file + ".nope", wantErr: "no such file"},
		{name: "absent", yaml: `other: 1`, source: "", wantErr: "not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg struct {
				URL   Secret `yaml:"url"`
				Other int    `yaml:"other"`
			}
			if err := yaml.Unmarshal([]byte(tt.yaml), &cfg); err != nil {
				t.Fatal(err)
			}
			if got := cfg.URL.Source(); got != tt.source {
				t.Errorf("Source = %q, want %q", got, tt.source)
			}
			got, err := cfg.URL.Resolve()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resolve error = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error leaks the secret: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Resolve = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestSecretMarshalKeepsReferences(t *testing.T) {
	out, err := yaml.Marshal(map[string]Secret{"a": SecretEnv("X"), "b": SecretFile("/run/s")})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a:\n    env: X\nb:\n    file: /run/s\n"; string(out) != want {
		t.Errorf("yaml = %q, want %q", out, want)
	}
}

func TestSecretInvalid(t *testing.T) {
	for _, doc := range []string{
		"url: {env: A, file: B}",
		"url: {}",
		"url: {envv: A}",
		"url: [a, b]",
		"url: {env: [a]}",
	} {
		var cfg struct {
			URL Secret `yaml:"url"`
		}
		err := yaml.Unmarshal([]byte(doc), &cfg)
		if err == nil {
			t.Errorf("%s: no error", doc)
			continue
		}
		if !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%s: error %q has no line", doc, err)
		}
	}
}

func TestSecretJSON(t *testing.T) {
	for doc, want := range map[string]string{
		`{"url": "v"}`:                       "value",
		`{"url": {"env": "E"}}`:              "env E",
		`{"url": {"file": "/f"}}`:            "file /f",
		`{"url": {"value": "v"}}`:            "value",
		`{"url": {"nope": "v"}}`:             "error",
		`{"url": {"env": "a", "file": "b"}}`: "error",
	} {
		var cfg struct {
			URL Secret `json:"url"`
		}
		got := "error"
		if err := json.Unmarshal([]byte(doc), &cfg); err == nil {
			got = cfg.URL.Source()
		}
		if got != want {
			t.Errorf("%s: got %q, want %q", doc, got, want)
		}
	}
}
