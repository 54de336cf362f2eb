package connector

import (
	"strings"
	"testing"
	"time"
)

func TestLifecycleParsesFromThePolicyBlock(t *testing.T) {
	cfgs, err := ParseConfigs([]byte(`connectors:
  - name: ehr
    type: postgres
    policy:
      rate: 5
      delete_after: 720h
      reconcile_interval: 0s
      disable_orphans: true
      shared_patterns: ["desk*", "*svc*"]
  - name: wiki
    type: postgres
`))
	if err != nil {
		t.Fatal(err)
	}
	l := cfgs[0].Policy.Lifecycle
	if l.DeleteAfter != 720*time.Hour || l.Interval() != 0 || !l.DisableOrphans || len(l.Patterns()) != 2 {
		t.Fatalf("lifecycle = %+v (interval %s)", l, l.Interval())
	}
	if p, ok := l.SharedName("Desk-3"); !ok || p != "desk*" {
		t.Errorf("SharedName(Desk-3) = %q, %v", p, ok)
	}
	if _, ok := l.SharedName("jane.doe"); ok {
		t.Error("jane.doe matched a shared pattern")
	}
	d := cfgs[1].Policy.Lifecycle
	if d.DeleteAfter != 0 || d.Interval() != DefaultReconcileInterval || d.DisableOrphans {
		t.Fatalf("defaults = %+v", d)
	}
	for _, name := range []string{"frontdesk2", "nurse-station-4", "admin", "sysadmin", "temp", "test_user", "shared.ward3"} {
		if _, ok := d.SharedName(name); !ok {
			t.Errorf("default patterns miss %q", name)
		}
	}
	for _, name := range []string{"jane.doe", "tempest.smith", "nurse.jones"} {
		if p, ok := d.SharedName(name); ok {
			t.Errorf("default pattern %q matches a person's name %q", p, name)
		}
	}
}

func TestLifecycleErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ name, policy, want string }{
		{"negative delete", "delete_after: -1h", "policy.delete_after: must not be negative"},
		{"unitless delete", "delete_after: 720", "line 5: cannot unmarshal !!int `720` into time.Duration"},
		{"bad duration", "delete_after: soon", "line 5: cannot unmarshal !!str `soon` into time.Duration"},
		{"negative interval", "reconcile_interval: -5m", "policy.reconcile_interval: must not be negative"},
		{"bad pattern", `shared_patterns: ["[desk"]`, "policy.shared_patterns[0]: \"[desk\" is not a valid pattern"},
		{"empty pattern", `shared_patterns: [""]`, "policy.shared_patterns[0]: must not be empty"},
		{"orphans not bool", "disable_orphans: maybe", "line 5: cannot unmarshal !!str `maybe` into bool"},
		{"unknown field", "delete_afer: 1h", "delete_afer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfigs([]byte("connectors:\n  - name: ehr\n    type: postgres\n    policy:\n      " + tc.policy + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
