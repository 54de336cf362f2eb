package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const secretA = `["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]`

// Sources files merge: all the sources, one settings block; a clash, a second settings block
// or an unknown field names the file and line, and a bad source names its file.
func TestLoadSourcesMerges(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"gen.yaml":      "sources:\n  demo:\n    secrets: " + secretA + "\n",
		"mine.yaml":     "# mine\nsources:\n  hr:\n    secrets: " + secretA + "\nsettings:\n  rescind_grace: 48h\n",
		"empty.yaml":    "# nothing yet\nsources: {}\n",
		"clash.yaml":    "sources:\n  other:\n    secrets: " + secretA + "\n  demo:\n    secrets: " + secretA + "\n",
		"settings.yaml": "settings:\n  rescind_grace: 1h\n",
		"unknown.yaml":  "sources: {}\nsorces: {}\n",
		"bad.yaml":      "sources:\n  hr2:\n    format: nope\n    secrets: " + secretA + "\n",
	})
	p := func(names ...string) string {
		for i, n := range names {
			names[i] = filepath.Join(dir, n)
		}
		return strings.Join(names, ",")
	}
	c, err := LoadSources(p("gen.yaml", "mine.yaml", "empty.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Sources["demo"]; !ok || len(c.Sources) != 2 {
		t.Fatalf("merged sources %v", c.Sources)
	}
	for _, tc := range []struct {
		files []string
		want  string
	}{
		{[]string{"gen.yaml", "clash.yaml"}, `clash.yaml:4: webhook source "demo" is already defined at ` + filepath.Join(dir, "gen.yaml") + ":2"},
		{[]string{"mine.yaml", "settings.yaml"}, "settings.yaml:1: settings are already given in " + filepath.Join(dir, "mine.yaml")},
		{[]string{"gen.yaml", "unknown.yaml"}, `unknown.yaml:2: unknown field "sorces"`},
		{[]string{"gen.yaml", "bad.yaml"}, "bad.yaml:2: sources.hr2.format"},
	} {
		_, err := LoadSources(p(tc.files...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.files, err, tc.want)
		}
	}
}

func TestLoadConnectorsMerges(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"gen.yaml":  "connectors:\n  - name: demo-wiki\n    type: manual\n",
		"mine.yaml": "connectors: []\n",
		"two.yaml":  "connectors:\n  - name: okta\n    type: manual\n  - name: demo-wiki\n    type: manual\n",
	})
	cfgs, err := LoadConnectors(filepath.Join(dir, "gen.yaml") + "," + filepath.Join(dir, "mine.yaml"))
	if err != nil || len(cfgs) != 1 {
		t.Fatalf("%v, %v", cfgs, err)
	}
	_, err = LoadConnectors(filepath.Join(dir, "gen.yaml") + "," + filepath.Join(dir, "two.yaml"))
	want := filepath.Join(dir, "two.yaml") + `:4: connector "demo-wiki" is already defined at ` + filepath.Join(dir, "gen.yaml") + ":2"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("clash: %v, want %q", err, want)
	}
}
