package approval

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Policy says which systems hold ePHI, which access packages exist and which roles (job
// codes) get which packages. Later versions add approval matrices, SoD rules and reviews.
//
//	systems:
//	  - {name: reporting, holds_ephi: false, connector: demo-reporting, owner: it-owner}
//	packages:
//	  - {name: reporting-reader, system: reporting, entitlements: [reporting_read], auto_approve: true}
//	roles:
//	  - {job_code: RN, packages: [reporting-reader]}
type Policy struct {
	Systems  []System  `yaml:"systems"`
	Packages []Package `yaml:"packages"`
	Roles    []Role    `yaml:"roles"`

	// Hash is the SHA-256 of the file's bytes: which version of the policy decided.
	Hash string `yaml:"-"`
}

// System is a target system in the inventory.
type System struct {
	Name      string `yaml:"name"`
	Purpose   string `yaml:"purpose"`
	HoldsEPHI bool   `yaml:"holds_ephi"`
	// Connector is the provisioner connector instance that manages the system's accounts.
	Connector string `yaml:"connector"`
	Owner     string `yaml:"owner"`
}

// Package is a bundle of entitlements on one system.
type Package struct {
	Name         string   `yaml:"name"`
	System       string   `yaml:"system"`
	Entitlements []string `yaml:"entitlements"`
	Elevated     bool     `yaml:"elevated"`
	// AutoApprove grants without a person: allowed only for birthright packages on
	// systems without ePHI that are not elevated.
	AutoApprove bool `yaml:"auto_approve"`
}

// Role maps a job code to packages.
type Role struct {
	JobCode  string   `yaml:"job_code"`
	Packages []string `yaml:"packages"`
}

// LoadPolicy reads and validates a policy file.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy decodes a policy strictly and validates it. Errors name the line and field.
func ParsePolicy(b []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, err
	}
	var p Policy
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, err
	}
	lines := lineIndex(&root)
	var probs []string
	bad := func(path, format string, args ...any) {
		where := path
		if l, ok := lines[path]; ok {
			where = fmt.Sprintf("line %d: %s", l, path)
		}
		probs = append(probs, where+": "+fmt.Sprintf(format, args...))
	}
	systems := map[string]System{}
	for i, s := range p.Systems {
		path := fmt.Sprintf("systems[%d]", i)
		if s.Name == "" {
			bad(path+".name", "required")
			continue
		}
		if _, dup := systems[s.Name]; dup {
			bad(path+".name", "duplicate system %q", s.Name)
		}
		if s.Connector == "" {
			bad(path+".connector", "required: the connector that provisions %q", s.Name)
		}
		systems[s.Name] = s
	}
	packages := map[string]Package{}
	for i, pk := range p.Packages {
		path := fmt.Sprintf("packages[%d]", i)
		if pk.Name == "" {
			bad(path+".name", "required")
			continue
		}
		if _, dup := packages[pk.Name]; dup {
			bad(path+".name", "duplicate package %q", pk.Name)
		}
		packages[pk.Name] = pk
		sys, ok := systems[pk.System]
		if !ok {
			bad(path+".system", "unknown system %q", pk.System)
			continue
		}
		if pk.AutoApprove && (sys.HoldsEPHI || pk.Elevated) {
			bad(path+".auto_approve", "package %q cannot be auto-approved: system %q holds ePHI or the package is elevated", pk.Name, pk.System)
		}
	}
	jobs := map[string]bool{}
	for i, r := range p.Roles {
		path := fmt.Sprintf("roles[%d]", i)
		if r.JobCode == "" {
			bad(path+".job_code", "required")
		}
		if jobs[r.JobCode] {
			bad(path+".job_code", "duplicate job code %q", r.JobCode)
		}
		jobs[r.JobCode] = true
		for j, name := range r.Packages {
			if _, ok := packages[name]; !ok {
				bad(fmt.Sprintf("%s.packages[%d]", path, j), "unknown package %q", name)
			}
		}
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("invalid policy:\n  %s", strings.Join(probs, "\n  "))
	}
	sum := sha256.Sum256(b)
	p.Hash = hex.EncodeToString(sum[:])
	return &p, nil
}

// PackagesFor returns the packages of a job code, in policy order.
func (p *Policy) PackagesFor(jobCode string) []Package {
	for _, r := range p.Roles {
		if r.JobCode == jobCode {
			var out []Package
			for _, name := range r.Packages {
				if pk, ok := p.Package(name); ok {
					out = append(out, pk)
				}
			}
			return out
		}
	}
	return nil
}

// Package looks a package up by name.
func (p *Policy) Package(name string) (Package, bool) {
	i := slices.IndexFunc(p.Packages, func(pk Package) bool { return pk.Name == name })
	if i < 0 {
		return Package{}, false
	}
	return p.Packages[i], true
}

// System looks a system up by name.
func (p *Policy) System(name string) (System, bool) {
	i := slices.IndexFunc(p.Systems, func(s System) bool { return s.Name == name })
	if i < 0 {
		return System{}, false
	}
	return p.Systems[i], true
}

// lineIndex maps "systems[0].name"-style paths to their line in the file.
func lineIndex(root *yaml.Node) map[string]int {
	out := map[string]int{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				p := k
				if path != "" {
					p = path + "." + k
				}
				out[p] = n.Content[i].Line
				walk(n.Content[i+1], p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				out[p] = c.Line
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return out
}
