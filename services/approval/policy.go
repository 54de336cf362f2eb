package approval

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	goccyyaml "github.com/goccy/go-yaml"
	yamlparser "github.com/goccy/go-yaml/parser"
	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// Policy is the approval service's rule book: the system inventory, access packages, roles
// (job codes → packages), the approval matrix, separation-of-duties rules, review cadence,
// break-glass rules, vendors with business associate agreements, and which person each
// gRPC principal is. docs/policy.md describes every field with a full example.
type Policy struct {
	// Principals maps a gRPC principal (token name) to the worker id of the person; a
	// principal not listed is taken to be the worker whose id equals its name.
	Principals []PrincipalMap `yaml:"principals"`
	Vendors    []Vendor       `yaml:"vendors"`
	Systems    []System       `yaml:"systems"`
	Packages   []Package      `yaml:"packages"`
	Roles      []Role         `yaml:"roles"`
	Approval   ApprovalRules  `yaml:"approval"`
	SoD        []SoDRule      `yaml:"sod"`
	BreakGlass BreakGlass     `yaml:"break_glass"`

	// Hash is the SHA-256 of the file's bytes: which version of the policy decided.
	Hash string `yaml:"-"`
	// Path is the file the policy was read from, if any.
	Path  string `yaml:"-"`
	raw   []byte
	lines map[string]int // field path -> line in the file
}

// PrincipalMap says which worker a gRPC principal is.
type PrincipalMap struct {
	Name     string `yaml:"name"`
	WorkerID string `yaml:"worker_id"`
}

// Vendor is a third-party organisation whose staff may work for the organisation.
type Vendor struct {
	Name string `yaml:"name"`
	// BAA: a business associate agreement is on file; without one no ePHI package is granted
	// to the vendor's staff (it may also be recorded through the RecordBAA API).
	BAA          bool   `yaml:"baa"`
	BAAReference string `yaml:"baa_reference"`
}

// System is a target system in the inventory.
type System struct {
	Name         string `yaml:"name"`
	Purpose      string `yaml:"purpose"`
	HoldsEPHI    bool   `yaml:"holds_ephi"`
	AccessMethod string `yaml:"access_method"`
	AdminModel   string `yaml:"admin_model"`
	// Owner is the worker id of the system owner, who decides the owner stage and reviews.
	Owner string `yaml:"owner"`
	// Approvers may decide the owner stage besides the owner (worker ids).
	Approvers []string `yaml:"approvers"`
	// Connector is the provisioner connector instance that manages the system's accounts.
	Connector string `yaml:"connector"`
	// BAARequired: vendor staff need a BAA on file even if the system holds no ePHI.
	BAARequired bool   `yaml:"baa_required"`
	Review      Review `yaml:"review"`
}

// Review is a system's access review cadence.
type Review struct {
	// Every is the cadence; zero means reviews only on demand.
	Every Duration `yaml:"every"`
	// Deadline is how long reviewers have (default 14 days).
	Deadline Duration `yaml:"deadline"`
	// Reviewer is owner (default) or manager. Never the holder: an owner reviewing their own
	// grant is replaced by the holder's manager, and failing that by security.
	Reviewer string `yaml:"reviewer"`
	// RevokeUnanswered revokes grants nobody reviewed by the deadline (after escalation).
	RevokeUnanswered bool `yaml:"revoke_unanswered"`
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
	// MaxDuration bounds time-boxed (JIT) grants of the package; zero: no JIT bound.
	MaxDuration Duration `yaml:"max_duration"`
	// Stages overrides the approval matrix for this package (it can add, never drop, the
	// stages the matrix requires).
	Stages []string `yaml:"stages"`
}

// Role maps a job code to packages.
type Role struct {
	JobCode  string   `yaml:"job_code"`
	Packages []string `yaml:"packages"`
}

// ApprovalRules is the approval matrix: stages per kind of package, decided in order.
type ApprovalRules struct {
	// Standard: packages on systems without ePHI that are not auto-approved (default [manager]).
	Standard []string `yaml:"standard"`
	// EPHI: packages on systems holding ePHI (default [manager, owner]; must include both).
	EPHI []string `yaml:"ephi"`
	// Elevated: administrative packages (default [manager, owner, security]; must include security).
	Elevated []string `yaml:"elevated"`
	// ReapprovalWindow: a mover's grants held outside the new role must be re-approved within
	// it, else they are revoked (default 7 days).
	ReapprovalWindow Duration `yaml:"reapproval_window"`
}

// SoDRule names packages that must not be held together.
type SoDRule struct {
	Name     string   `yaml:"name"`
	Packages []string `yaml:"packages"`
	Reason   string   `yaml:"reason"`
}

// BreakGlass are the emergency access rules.
type BreakGlass struct {
	ReasonCodes []string `yaml:"reason_codes"`
	// MaxDuration of a break-glass grant (default 4h).
	MaxDuration Duration `yaml:"max_duration"`
	// ReviewWithin: the post-use review is overdue after this (default 24h).
	ReviewWithin Duration `yaml:"review_within"`
	// Packages that may be used in an emergency; empty: none.
	Packages []string `yaml:"packages"`
}

// Stage names.
const (
	StageManager  = "manager"
	StageOwner    = "owner"
	StageSecurity = "security"
	// StageSoD is added to a request that asks for an exception to a SoD rule.
	StageSoD = "sod_exception"
)

// Duration is a time.Duration written as Go durations ("36h", "90m") or in days ("90d").
type Duration time.Duration

// D returns the duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML accepts "90d" as well as Go durations.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	if days, ok := strings.CutSuffix(v, "d"); ok {
		if x, err := strconv.Atoi(days); err == nil && x >= 0 {
			*d = Duration(time.Duration(x) * 24 * time.Hour)
			return nil
		}
	}
	x, err := time.ParseDuration(v)
	if err != nil || x < 0 {
		return fmt.Errorf("line %d: %q is not a duration (use 90d, 36h or 15m)", n.Line, n.Value)
	}
	*d = Duration(x)
	return nil
}

// MarshalYAML writes the duration as a Go duration.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// LoadPolicy reads and validates a policy file. Errors name the file, line and field.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p.Path = path
	return p, nil
}

// ParsePolicy decodes a policy strictly and validates it. Errors name the line and field.
func ParsePolicy(b []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, syntaxError(b, err)
	}
	if len(root.Content) == 0 || (root.Content[0].Kind == yaml.MappingNode && len(root.Content[0].Content) == 0) {
		return nil, errors.New("the policy is empty: it needs at least systems, packages and roles (docs/policy.md)")
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the policy must be a mapping (systems:, packages:, roles: ...)", root.Content[0].Line)
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
		probs = append(probs, at(lines, path)+": "+fmt.Sprintf(format, args...))
	}
	for i, pm := range p.Principals {
		if pm.Name == "" || pm.WorkerID == "" {
			bad(fmt.Sprintf("principals[%d]", i), "name and worker_id are required")
		}
	}
	for i, v := range p.Vendors {
		if v.Name == "" {
			bad(fmt.Sprintf("vendors[%d].name", i), "required")
		}
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
		if s.HoldsEPHI && s.Owner == "" {
			bad(path+".owner", "required: system %q holds ePHI, so its owner approves access", s.Name)
		}
		switch s.Review.Reviewer {
		case "", "owner", "manager":
		default:
			bad(path+".review.reviewer", "must be owner or manager, not %q", s.Review.Reviewer)
		}
		systems[s.Name] = s
	}
	checkStages := func(path string, stages []string) {
		for j, st := range stages {
			if st != StageManager && st != StageOwner && st != StageSecurity {
				bad(fmt.Sprintf("%s[%d]", path, j), "unknown stage %q (manager, owner or security)", st)
			}
		}
	}
	checkStages("approval.standard", p.Approval.Standard)
	checkStages("approval.ephi", p.Approval.EPHI)
	checkStages("approval.elevated", p.Approval.Elevated)
	if len(p.Approval.EPHI) > 0 && !(slices.Contains(p.Approval.EPHI, StageManager) && slices.Contains(p.Approval.EPHI, StageOwner)) {
		bad("approval.ephi", "ePHI access needs both the manager and the owner stage")
	}
	if len(p.Approval.Elevated) > 0 && !slices.Contains(p.Approval.Elevated, StageSecurity) {
		bad("approval.elevated", "elevated access needs the security stage")
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
		checkStages(path+".stages", pk.Stages)
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
	rules := map[string]bool{}
	for i, r := range p.SoD {
		path := fmt.Sprintf("sod[%d]", i)
		if r.Name == "" {
			bad(path+".name", "required")
		}
		if rules[r.Name] {
			bad(path+".name", "duplicate rule %q", r.Name)
		}
		rules[r.Name] = true
		if len(r.Packages) < 2 {
			bad(path+".packages", "a rule needs at least two packages")
		}
		for j, name := range r.Packages {
			if _, ok := packages[name]; !ok {
				bad(fmt.Sprintf("%s.packages[%d]", path, j), "unknown package %q", name)
			}
		}
		// A role that hands out a forbidden combination would refuse every holder.
		for k, role := range p.Roles {
			n := 0
			for _, name := range r.Packages {
				if slices.Contains(role.Packages, name) {
					n++
				}
			}
			if n >= 2 {
				bad(fmt.Sprintf("roles[%d].packages", k), "role %q includes packages that SoD rule %q forbids together", role.JobCode, r.Name)
			}
		}
	}
	for j, name := range p.BreakGlass.Packages {
		if _, ok := packages[name]; !ok {
			bad(fmt.Sprintf("break_glass.packages[%d]", j), "unknown package %q", name)
		}
	}
	if len(p.BreakGlass.Packages) > 0 && len(p.BreakGlass.ReasonCodes) == 0 {
		bad("break_glass.reason_codes", "required when break_glass.packages is set")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("invalid policy:\n  %s", strings.Join(probs, "\n  "))
	}
	if len(p.Approval.Standard) == 0 {
		p.Approval.Standard = []string{StageManager}
	}
	if len(p.Approval.EPHI) == 0 {
		p.Approval.EPHI = []string{StageManager, StageOwner}
	}
	if len(p.Approval.Elevated) == 0 {
		p.Approval.Elevated = []string{StageManager, StageOwner, StageSecurity}
	}
	if p.Approval.ReapprovalWindow == 0 {
		p.Approval.ReapprovalWindow = Duration(7 * 24 * time.Hour)
	}
	if p.BreakGlass.MaxDuration == 0 {
		p.BreakGlass.MaxDuration = Duration(4 * time.Hour)
	}
	if p.BreakGlass.ReviewWithin == 0 {
		p.BreakGlass.ReviewWithin = Duration(24 * time.Hour)
	}
	for i, pk := range p.Packages {
		sys := systems[pk.System]
		if sys.Owner == "" && !p.AutoApprovable(pk) && slices.Contains(p.StagesFor(pk), StageOwner) {
			bad(fmt.Sprintf("packages[%d].system", i), "package %q needs the owner stage, but system %q has no owner", pk.Name, pk.System)
		}
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("invalid policy:\n  %s", strings.Join(probs, "\n  "))
	}
	sum := sha256.Sum256(b)
	p.Hash = hex.EncodeToString(sum[:])
	p.raw = slices.Clone(b)
	p.lines = lines
	return &p, nil
}

// at names a field by its line and path ("line 12: systems[1].connector"), with the line of
// its nearest parent written in the file when the field itself is not (a default).
func at(lines map[string]int, path string) string {
	for p := path; p != ""; {
		if l, ok := lines[p]; ok {
			return fmt.Sprintf("line %d: %s", l, path)
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return path
}

// CheckConnectors checks the policy against the connectors that will carry it out (a
// connectors file): every system names a configured connector, and every package
// entitlement is one its system's connector defines (connector.Config.Entitlements; a
// connector type that keeps no catalog, such as manual or webhook, accepts any name).
// Either mistake would only show at provisioning time, as a dead letter. Errors name the
// policy file, line and field, and where the connector is configured.
func (p *Policy) CheckConnectors(conns []connector.Config) error {
	byName := map[string]*connector.Config{}
	var names []string
	for i := range conns {
		byName[conns[i].Name] = &conns[i]
		names = append(names, conns[i].Name)
	}
	slices.Sort(names)
	file := "connectors file"
	if len(conns) > 0 && conns[0].File() != "" {
		file = conns[0].File()
	}
	var probs []string
	bad := func(path, format string, args ...any) {
		probs = append(probs, at(p.lines, path)+": "+fmt.Sprintf(format, args...))
	}
	type catalog struct {
		names []string
		known bool
	}
	catalogs := map[string]catalog{}
	for i, sys := range p.Systems {
		c, ok := byName[sys.Connector]
		if !ok {
			bad(fmt.Sprintf("systems[%d].connector", i), "system %q names connector %q, which %s does not configure (configured: %s)",
				sys.Name, sys.Connector, file, strings.Join(names, ", "))
			continue
		}
		ents, known, err := c.Entitlements()
		if err != nil {
			probs = append(probs, err.Error())
			continue
		}
		catalogs[sys.Name] = catalog{ents, known}
	}
	for i, pk := range p.Packages {
		cat, ok := catalogs[pk.System]
		if !ok || !cat.known {
			continue
		}
		sys, _ := p.System(pk.System)
		c := byName[sys.Connector]
		for j, e := range pk.Entitlements {
			if !slices.Contains(cat.names, e) {
				where := c.Name
				if c.Line() > 0 {
					where = fmt.Sprintf("%s (%s:%d)", c.Name, file, c.Line())
				}
				defined := strings.Join(cat.names, ", ")
				if defined == "" {
					defined = "none"
				}
				bad(fmt.Sprintf("packages[%d].entitlements[%d]", i, j), "package %q grants %q, which connector %s does not define (it defines: %s)",
					pk.Name, e, where, defined)
			}
		}
	}
	if len(probs) == 0 {
		return nil
	}
	prefix := ""
	if p.Path != "" {
		prefix = p.Path + ": "
	}
	return fmt.Errorf("%spolicy does not fit the connectors:\n  %s", prefix, strings.Join(probs, "\n  "))
}

// yamlPos is where goccy/go-yaml's FormatError says a syntax error is: "[line:column] message".
var yamlPos = regexp.MustCompile(`^\[(\d+):(\d+)\]\s*`)

// syntaxError names the line and column of a YAML syntax error. yaml.v3 reports the line
// where the enclosing block or flow began (an unclosed "[" on line 2 found on line 4 says
// "line 2"), so the text is parsed again with goccy/go-yaml's parser, which points at the
// token where parsing failed.
func syntaxError(b []byte, v3err error) error {
	_, err := yamlparser.ParseBytes(b, 0)
	if err == nil {
		return v3err
	}
	msg := strings.TrimSpace(goccyyaml.FormatError(err, false, false))
	if m := yamlPos.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("line %s, column %s: %s", m[1], m[2], strings.TrimSpace(msg[len(m[0]):]))
	}
	return v3err
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

// Identity is the worker id of a gRPC principal.
func (p *Policy) Identity(principal string) string {
	for _, pm := range p.Principals {
		if pm.Name == principal {
			return pm.WorkerID
		}
	}
	return principal
}

// AutoApprovable says whether policy alone may grant the package.
func (p *Policy) AutoApprovable(pk Package) bool {
	sys, _ := p.System(pk.System)
	return pk.AutoApprove && !sys.HoldsEPHI && !pk.Elevated
}

// StagesFor is the approval stages a package needs, in order.
func (p *Policy) StagesFor(pk Package) []string {
	sys, _ := p.System(pk.System)
	base := p.Approval.Standard
	switch {
	case pk.Elevated:
		base = p.Approval.Elevated
	case sys.HoldsEPHI:
		base = p.Approval.EPHI
	}
	out := slices.Clone(base)
	for _, st := range pk.Stages {
		if !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out
}

// VendorBAA says whether the policy records a BAA for a vendor organisation.
func (p *Policy) VendorBAA(org string) bool {
	for _, v := range p.Vendors {
		if v.Name == org {
			return v.BAA
		}
	}
	return false
}

// Conflicts returns the SoD rule that held plus pkg would break, if any.
func (p *Policy) Conflicts(held []string, pkg string) (SoDRule, string, bool) {
	for _, r := range p.SoD {
		if !slices.Contains(r.Packages, pkg) {
			continue
		}
		for _, h := range held {
			if h != pkg && slices.Contains(r.Packages, h) {
				return r, h, true
			}
		}
	}
	return SoDRule{}, "", false
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
