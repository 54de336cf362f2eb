package connector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"

	"go.yaml.in/yaml/v3"
)

// Config is one entry of a connectors file:
//
//	connectors:
//	  - name: ehr-db
//	    type: postgres
//	    system: ehr
//	    config:
//	      url: {env: TENURE_EHR_DB_URL}
//	      role_prefix: ehr_
//	    policy:               # optional; see Policy
//	      rate: 20
type Config struct {
	// Name identifies this connector instance. It is a NATS subject token
	// (tenure.provision.<name>.<op>), so it is limited to [a-z0-9_-].
	Name string `yaml:"name"`
	// Type is a registered connector type (see Types).
	Type string `yaml:"type"`
	// System is the policy's name for the system this connector provisions; it defaults to
	// Name. Several connectors may serve one system (an application and its database).
	System string `yaml:"system"`
	// Config is decoded by the connector type's factory when the connector is opened, so its
	// errors keep their line numbers in the file.
	Config yaml.Node `yaml:"config"`
	// Policy is how the host drives the target (rate, concurrency, retries); see Policy.
	Policy Policy `yaml:"policy"`

	file string // for error messages; empty when parsed from bytes
	line int
}

// maxNameLen keeps names comfortable in subjects, metrics labels and logs.
const maxNameLen = 64

var nameRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// where says where the entry was written, for error messages.
func (c *Config) where() string {
	switch {
	case c.file != "" && c.line > 0:
		return fmt.Sprintf("%s:%d: ", c.file, c.line)
	case c.file != "":
		return c.file + ": "
	case c.line > 0:
		return fmt.Sprintf("line %d: ", c.line)
	}
	return ""
}

// Open opens the connector the entry describes. Errors name the file, the entry and, for
// config problems, the line and field.
func (c *Config) Open(ctx context.Context) (Connector, error) {
	f, err := lookup(c.Type)
	if err != nil {
		return nil, fmt.Errorf("%sconnector %q: %w", c.where(), c.Name, err)
	}
	conn, err := open(ctx, c.Type, f, &c.Config)
	if err != nil {
		return nil, fmt.Errorf("%sconnector %q: %w", c.where(), c.Name, err)
	}
	return conn, nil
}

// LoadConfigs reads a connectors file. See ParseConfigs.
func LoadConfigs(path string) ([]Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseConfigs(data, path)
}

// ParseConfigs parses a connectors file: a YAML document with a "connectors" list. Decoding is
// strict, names must be unique NATS subject tokens, and every problem found is reported, each
// with its line. Connector types and their configs are checked later, by Config.Open, because
// which types exist depends on what the binary links in.
func ParseConfigs(data []byte) ([]Config, error) {
	return parseConfigs(data, "")
}

func parseConfigs(data []byte, file string) ([]Config, error) {
	prefix := ""
	if file != "" {
		prefix = file + ": "
	}
	var doc struct {
		Connectors []Config `yaml:"connectors"`
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, err)
	}
	if err := decodeNode(&root, &doc); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, err)
	}
	// The struct decode drops node positions; read the entries' lines from the tree.
	entries := connectorsSeq(&root)

	var errs []error
	firstLine := map[string]int{}
	for i := range doc.Connectors {
		c := &doc.Connectors[i]
		c.file = file
		if i < len(entries) {
			c.line = entries[i].Line
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s"+format, append([]any{c.where()}, args...)...))
		}
		switch {
		case c.Name == "":
			bad("connector %d: name is required", i+1)
		case len(c.Name) > maxNameLen || !nameRE.MatchString(c.Name):
			bad("connector name %q must be 1 to %d of [a-z0-9_-] (it is a NATS subject token)", c.Name, maxNameLen)
		default:
			if at, dup := firstLine[c.Name]; dup {
				bad("duplicate connector name %q (first at line %d)", c.Name, at)
			} else {
				firstLine[c.Name] = c.line
			}
		}
		if c.Type == "" {
			bad("connector %q: type is required", c.Name)
		}
		if c.System == "" {
			c.System = c.Name
		}
		if err := c.Policy.Validate(); err != nil {
			bad("connector %q: %w", c.Name, err)
		}
		switch c.Config.Kind {
		case 0, yaml.MappingNode:
		case yaml.ScalarNode:
			if c.Config.Tag != "!!null" {
				bad("connector %q: config must be a mapping", c.Name)
			}
		default:
			bad("connector %q: config must be a mapping", c.Name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return doc.Connectors, nil
}

// connectorsSeq returns the entries of the top-level "connectors" sequence.
func connectorsSeq(root *yaml.Node) []*yaml.Node {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil
	}
	m := root.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "connectors" {
			seq := m.Content[i+1]
			for seq.Kind == yaml.AliasNode && seq.Alias != nil {
				seq = seq.Alias
			}
			if seq.Kind == yaml.SequenceNode {
				return seq.Content
			}
		}
	}
	return nil
}
