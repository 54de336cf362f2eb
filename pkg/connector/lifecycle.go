package connector

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// Lifecycle is what the provisioner does with a target's accounts beyond converging the
// commands it gets. It is part of the target's policy block in the connectors file:
//
//	policy:
//	  delete_after: 720h          # delete a leaver's disabled account 30 days on (0: never)
//	  reconcile_interval: 24h     # list the target and report findings (default 24h; 0: never)
//	  disable_orphans: true       # disable accounts no active worker explains
//	  shared_patterns: [frontdesk*, "*admin*"]   # replaces DefaultSharedPatterns
//
// The zero value deletes nothing, reconciles every 24 hours where the connector can list
// accounts, and only reports orphans.
type Lifecycle struct {
	// DeleteAfter is the grace period between a leaver's disable and the account's deletion;
	// a termination HR rescinds within it re-enables the account. 0 never deletes.
	DeleteAfter time.Duration `yaml:"delete_after"`
	// ReconcileInterval is how often the target's accounts are listed and compared with the
	// account links; nil means DefaultReconcileInterval, 0 turns scheduled runs off.
	ReconcileInterval *time.Duration `yaml:"reconcile_interval"`
	// DisableOrphans disables, through the ordinary command path with read-back, accounts
	// that reconciliation finds with no link or linked to a worker who is not active.
	DisableOrphans bool `yaml:"disable_orphans"`
	// SharedPatterns are case-insensitive shell patterns (path.Match) for usernames of likely
	// shared or generic accounts; empty means DefaultSharedPatterns.
	SharedPatterns []string `yaml:"shared_patterns"`
}

// DefaultReconcileInterval is how often a target that can list accounts is reconciled.
const DefaultReconcileInterval = 24 * time.Hour

// DefaultSharedPatterns name accounts a ward or a desk shares rather than one person:
// HIPAA's unique user identification (164.312(a)(2)(i)) rules them out for ePHI.
var DefaultSharedPatterns = []string{
	"frontdesk*", "front-desk*", "front_desk*", "front.desk*", "reception*",
	"temp", "temp[0-9_.-]*", "tmp*", "*admin*", "test*", "*shared*", "generic*",
	"nurse*station*", "station*", "ward*", "kiosk*", "guest*", "scanner*", "pharmacy*", "lab[0-9_.-]*",
}

// Interval returns the effective reconcile interval (0: off).
func (l Lifecycle) Interval() time.Duration {
	if l.ReconcileInterval == nil {
		return DefaultReconcileInterval
	}
	return *l.ReconcileInterval
}

// Patterns returns the effective shared-account patterns.
func (l Lifecycle) Patterns() []string {
	if len(l.SharedPatterns) == 0 {
		return DefaultSharedPatterns
	}
	return l.SharedPatterns
}

// SharedName reports whether username matches one of the shared-account patterns, and which.
func (l Lifecycle) SharedName(username string) (string, bool) {
	u := strings.ToLower(username)
	for _, p := range l.Patterns() {
		if ok, _ := path.Match(strings.ToLower(p), u); ok {
			return p, true
		}
	}
	return "", false
}

// validate reports every lifecycle field out of range, named as in the connectors file.
func (l Lifecycle) validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("policy.%s: "+format, append([]any{field}, args...)...))
	}
	switch d := l.DeleteAfter; {
	case d < 0:
		bad("delete_after", "must not be negative (0 never deletes), got %s", d)
	case d > 0 && d < time.Millisecond:
		bad("delete_after", "%s is below 1ms; write the unit, e.g. 720h", d)
	}
	if l.ReconcileInterval != nil {
		switch d := *l.ReconcileInterval; {
		case d < 0:
			bad("reconcile_interval", "must not be negative (0 turns scheduled reconciliation off), got %s", d)
		case d > 0 && d < time.Millisecond:
			bad("reconcile_interval", "%s is below 1ms; write the unit, e.g. 24h", d)
		}
	}
	for i, p := range l.SharedPatterns {
		if strings.TrimSpace(p) == "" {
			bad(fmt.Sprintf("shared_patterns[%d]", i), "must not be empty")
			continue
		}
		if _, err := path.Match(p, ""); err != nil {
			bad(fmt.Sprintf("shared_patterns[%d]", i), "%q is not a valid pattern: %v", p, err)
		}
	}
	return errs
}
