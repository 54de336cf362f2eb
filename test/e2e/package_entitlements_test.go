package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// A package may be a plain account with no entitlements (the policy loader accepts a package
// without `entitlements`, or with an empty list): the joiner must then still get the account,
// or the loader must refuse the policy. Today neither happens: approval inserts a
// nil slice into grants.entitlements (NOT NULL) when the key is omitted, and the provisioner
// inserts the decision's empty repeated field (nil after decoding) into
// link_grants.entitlements (NOT NULL) even when the policy says `entitlements: []`; both
// handlers fail with SQLSTATE 23502 on every redelivery.
func TestJoinerPackageWithoutEntitlements(t *testing.T) {
	for _, tc := range []struct{ name, ents string }{{"omitted", ""}, {"empty list", "entitlements: [], "}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store := newAccountStore(t)
			env := startStack(t, stackOptions{
				Policy: "systems:\n  - {name: rostering, holds_ephi: false, connector: rostering}\n" +
					"packages:\n  - {name: rostering-user, system: rostering, " + tc.ents + "auto_approve: true}\n" +
					"roles:\n  - {job_code: RN, packages: [rostering-user]}\n",
				Connectors: fmt.Sprintf("connectors:\n  - name: rostering\n    type: webhook\n    config: {url: %q, secret: %q}\n", store.URL, store.Secret),
			})
			prov := provisionerv1.NewProvisioningServiceClient(dial(t, env.GRPCAddr, env.OperatorToken))
			worker := "w-plain-1"
			if code, res := postWebhook(t, env.Hook, env.HRSecret, "hire-"+worker, hrEvent("hire", worker, "RN", "pat.plain@clinic.example")); code != 202 {
				t.Fatalf("joiner: %d %v", code, res)
			}
			eventually(t, 20*time.Second, "the account verified enabled", func() error {
				r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
				if err != nil {
					return err
				}
				if len(r.Accounts) != 1 || r.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
					return fmt.Errorf("accounts %v", r.Accounts)
				}
				return nil
			})
			if st := store.State("pat.plain"); st != "enabled" {
				t.Fatalf("target: pat.plain is %q, want enabled", st)
			}
		})
	}
}
