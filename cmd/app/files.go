package app

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/services/intake"
)

// --connectors and --webhook-sources take one file or a comma list of files, merged in
// order: `tenure dev` passes its generated demo file and the user's own, so it never has to
// write into a file the user edits. A name defined twice is an error naming both places.

func splitFiles(paths string) []string {
	var out []string
	for _, p := range strings.Split(paths, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// LoadConnectors reads the connectors files of a comma list and merges them.
func LoadConnectors(paths string) ([]connector.Config, error) {
	return connector.LoadConfigFiles(splitFiles(paths)...)
}

// ConnectorNames are the names of the connectors the files define.
func ConnectorNames(cfgs []connector.Config) []string {
	out := make([]string, len(cfgs))
	for i, c := range cfgs {
		out[i] = c.Name
	}
	return out
}

// LoadSources reads the webhook sources files of a comma list and merges them: the
// sources of all, the settings block of at most one.
func LoadSources(paths string) (intake.Config, error) {
	files := splitFiles(paths)
	if len(files) == 1 {
		return intake.LoadConfig(files[0])
	}
	type place struct {
		file string
		line int
	}
	merged := &yaml.Node{Kind: yaml.MappingNode}
	sources := &yaml.Node{Kind: yaml.MappingNode}
	merged.Content = append(merged.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "sources"}, sources)
	seen := map[string]place{}
	var settingsFrom string
	var errs []error
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			return intake.Config{}, fmt.Errorf("intake: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return intake.Config{}, fmt.Errorf("intake: %s: %w", p, err)
		}
		if len(doc.Content) == 0 {
			continue // only comments
		}
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			return intake.Config{}, fmt.Errorf("intake: %s:%d: want a mapping with sources: (and settings:)", p, root.Line)
		}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k, v := root.Content[i], root.Content[i+1]
			switch k.Value {
			case "sources":
				if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
					continue
				}
				if v.Kind != yaml.MappingNode {
					return intake.Config{}, fmt.Errorf("intake: %s:%d: sources must be a mapping of name to source", p, v.Line)
				}
				for j := 0; j+1 < len(v.Content); j += 2 {
					name := v.Content[j]
					if prev, dup := seen[name.Value]; dup {
						errs = append(errs, fmt.Errorf("intake: %s:%d: webhook source %q is already defined at %s:%d; rename one of them", p, name.Line, name.Value, prev.file, prev.line))
						continue
					}
					seen[name.Value] = place{p, name.Line}
					sources.Content = append(sources.Content, name, v.Content[j+1])
				}
			case "settings":
				if settingsFrom != "" {
					errs = append(errs, fmt.Errorf("intake: %s:%d: settings are already given in %s; keep one settings block", p, k.Line, settingsFrom))
					continue
				}
				settingsFrom = p
				merged.Content = append(merged.Content, k, v)
			default:
				errs = append(errs, fmt.Errorf("intake: %s:%d: unknown field %q (want sources, settings)", p, k.Line, k.Value))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return intake.Config{}, err
	}
	b, err := yaml.Marshal(merged)
	if err != nil {
		return intake.Config{}, err
	}
	c, err := intake.ParseConfig(b)
	if err != nil {
		// ParseConfig names the source (sources.<name>); say which file holds it.
		msg := strings.TrimPrefix(err.Error(), "intake: ")
		for name, at := range seen {
			if strings.HasPrefix(msg, "sources."+name+":") || strings.HasPrefix(msg, "sources."+name+".") {
				return intake.Config{}, fmt.Errorf("intake: %s:%d: %s", at.file, at.line, msg)
			}
		}
		return intake.Config{}, fmt.Errorf("intake: %s: %s", strings.Join(files, ", "), msg)
	}
	return c, nil
}
