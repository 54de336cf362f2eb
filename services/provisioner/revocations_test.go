package provisioner

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// streamMsgs returns every message on subject in TENURE_EVENTS, oldest first.
func (e *env) streamMsgs(t *testing.T, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	return subjectMsgs(t, e.js, subject)
}

// subjectMsgs returns every message on subject in TENURE_EVENTS, oldest first.
func subjectMsgs(t *testing.T, js jetstream.JetStream, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Subjects[subject] == 0 {
		return nil
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		if m, err := st.GetMsg(ctx, seq); err == nil && m.Subject == subject { // err: deleted
			out = append(out, m)
		}
	}
	return out
}

// revocations decodes the messages on tenure.revocation.<kind>.<worker>.
func (e *env) revocations(t *testing.T, kind, worker string) []*eventsv1.Revocation {
	t.Helper()
	var out []*eventsv1.Revocation
	for _, m := range e.streamMsgs(t, events.Subject("tenure.revocation", kind, worker)) {
		var r eventsv1.Revocation
		if err := proto.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(events.HeaderID) == "" || m.Header.Get("ce-type") != "tenure.revocation."+kind {
			t.Fatalf("headers %v", m.Header)
		}
		out = append(out, &r)
	}
	return out
}

// revokedIn returns the grant ids that verified results for the worker confirmed as revoked.
func (e *env) revokedIn(t *testing.T, worker string) []string {
	t.Helper()
	var ids []string
	for _, m := range e.streamMsgs(t, "tenure.result.demo.verified") {
		var r eventsv1.ProvisionResult
		if err := proto.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		if r.WorkerId == worker && r.Outcome == eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED {
			ids = append(ids, r.RevokedGrantIds...)
		}
	}
	return ids
}

func (e *env) decide(t *testing.T, kind eventsv1.AccessDecisionKind, worker, grant string, ents ...string) {
	t.Helper()
	tok := "grant"
	if kind == eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE {
		tok = "revoke"
	}
	e.publish(t, events.Subject("tenure.access", tok, worker), worker, &eventsv1.AccessDecision{Kind: kind, DecisionId: events.NewID(),
		WorkerId: worker, GrantId: grant, Connector: "demo", System: "reporting", Entitlements: ents})
}

func (e *env) waitVerified(t *testing.T, worker string, want eventsv1.AccountState) {
	t.Helper()
	eventually(t, "account verified "+want.String(), func() error {
		res, _ := e.svc.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if len(res.GetAccounts()) != 1 || res.Accounts[0].ObservedState != want || res.Accounts[0].ObservedGeneration != res.Accounts[0].Generation {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
}

// redeliver publishes an earlier message again with its ce-id but without Nats-Msg-Id, as
// JetStream redelivers it after the duplicate window: only the inbox can drop it.
func (e *env) redeliver(t *testing.T, m *jetstream.RawStreamMsg) uint64 {
	t.Helper()
	h := nats.Header{}
	for k, v := range m.Header {
		if k != events.HeaderMsgID {
			h[k] = v
		}
	}
	ack, err := e.js.PublishMsg(context.Background(), &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data})
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// consumed waits until the durable acknowledged the stream sequence seq.
func (e *env) consumed(t *testing.T, durable string, seq uint64) {
	t.Helper()
	eventually(t, durable+" consumed", func() error {
		c, err := e.js.Consumer(context.Background(), natsx.EventsStream, durable)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.AckFloor.Stream < seq {
			return fmt.Errorf("ack floor %d < %d", info.AckFloor.Stream, seq)
		}
		return nil
	})
}

// A revoke that the target must carry out (the last grant of an account) is confirmed by the
// read-back of the disable: the result names the grant in revoked_grant_ids and
// tenure.revocation.grant_revoked.<worker> carries it once, also when the command is
// redelivered, the decision repeated, and the account read back again later.
func TestGrantRevokedAfterReadBack(t *testing.T) {
	e := start(t)
	ent := "g" + e.prefix + "readers"
	e.join(t, "gr1") // grant g-gr1
	e.waitVerified(t, "gr1", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	if got := e.revocations(t, "grant_revoked", "gr1"); len(got) != 0 {
		t.Fatalf("grant_revoked before any revoke: %v", got)
	}

	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, "gr1", "g-gr1")
	eventually(t, "grant_revoked published", func() error {
		if n := len(e.revocations(t, "grant_revoked", "gr1")); n != 1 {
			return fmt.Errorf("%d grant_revoked", n)
		}
		return nil
	})
	// The target really lost the access: the role is NOLOGIN (read directly, not through tenure).
	if a := e.account(t, "gr1"); a.State != connector.StateDisabled {
		t.Fatalf("target account %+v", a)
	}
	r := e.revocations(t, "grant_revoked", "gr1")[0]
	if r.RevocationId != "g-gr1" || r.Kind != eventsv1.RevocationKind_REVOCATION_KIND_GRANT_REVOKED || r.WorkerId != "gr1" || r.Email != "gr1@hospital.example" ||
		r.Connector != "demo" || r.System != "reporting" || r.Username != "gr1" || r.LinkId == "" || !r.Verified || r.OccurredAt == nil ||
		r.GrantId != "g-gr1" || !slices.Equal(r.Entitlements, []string{ent}) {
		t.Fatalf("revocation %v", r)
	}
	msgs := e.streamMsgs(t, "tenure.revocation.grant_revoked.gr1")
	if id := msgs[0].Header.Get(events.HeaderID); id != grantRevokedEventID("g-gr1") || msgs[0].Header.Get(events.HeaderMsgID) != id {
		t.Fatalf("event id %q", id)
	}
	if ids := e.revokedIn(t, "gr1"); !slices.Contains(ids, "g-gr1") {
		t.Fatalf("results confirm %v", ids)
	}

	// Redeliver the disable command (past JetStream's duplicate window), repeat the revoke
	// decision, and make the account be read back again (a new grant re-enables it): the
	// grant stays announced once.
	cmds := e.streamMsgs(t, "tenure.provision.demo.disable")
	if len(cmds) != 1 {
		t.Fatalf("%d disable commands", len(cmds))
	}
	seq := e.redeliver(t, cmds[0])
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, "gr1", "g-gr1")
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT, "gr1", "g2-gr1", ent)
	e.waitVerified(t, "gr1", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	eventually(t, "re-verification result", func() error {
		if n := len(e.streamMsgs(t, "tenure.result.demo.verified")); n < 3 {
			return fmt.Errorf("%d results", n)
		}
		return nil
	})
	e.consumed(t, workDurable("demo"), seq)
	time.Sleep(300 * time.Millisecond) // let the relay publish anything that was (wrongly) written
	if got := e.revocations(t, "grant_revoked", "gr1"); len(got) != 1 {
		t.Fatalf("grant_revoked published %d times", len(got))
	}
}

// A revoke that changes nothing in the target still gets confirmed: the entitlement is still
// held through another grant, or the leaver's account is already disabled. The approval
// service's access reviews wait for that confirmation (revoked_grant_ids).
func TestRevokeThatChangesNothingIsConfirmed(t *testing.T) {
	e := start(t)
	ent := "g" + e.prefix + "readers"
	e.join(t, "gr2") // grant g-gr2
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT, "gr2", "g2-gr2", ent)
	e.waitVerified(t, "gr2", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	eventually(t, "both grants verified", func() error {
		var n int
		e.pool.QueryRow(context.Background(), "SELECT count(*) FROM link_grants g JOIN links l USING (link_id) WHERE l.worker_id = 'gr2' AND l.observed_generation = l.generation").Scan(&n)
		if n != 2 {
			return fmt.Errorf("%d grants", n)
		}
		return nil
	})

	// Same entitlement, still held through g2-gr2: no command, yet confirmed.
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, "gr2", "g-gr2")
	eventually(t, "revoke of a duplicate grant confirmed", func() error {
		if ids := e.revokedIn(t, "gr2"); !slices.Contains(ids, "g-gr2") {
			return fmt.Errorf("confirmed %v", ids)
		}
		if got := e.revocations(t, "grant_revoked", "gr2"); len(got) != 1 || got[0].RevocationId != "g-gr2" || got[0].GrantId != "g-gr2" ||
			!slices.Equal(got[0].Entitlements, []string{ent}) {
			return fmt.Errorf("grant_revoked %v", got)
		}
		return nil
	})
	if a := e.account(t, "gr2"); a.State != connector.StateEnabled || !slices.Contains(a.Entitlements, ent) {
		t.Fatalf("target account %+v", a)
	}

	// The leaver disables the account; revoking the remaining grant afterwards changes
	// nothing in the target and is confirmed as well.
	e.leave(t, "gr2")
	eventually(t, "case completed", func() error {
		res, err := e.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: "gr2"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", res.LeaverCase.Status)
		}
		return nil
	})
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, "gr2", "g2-gr2")
	eventually(t, "revoke after the disable confirmed", func() error {
		if ids := e.revokedIn(t, "gr2"); !slices.Contains(ids, "g2-gr2") {
			return fmt.Errorf("confirmed %v", ids)
		}
		got := e.revocations(t, "grant_revoked", "gr2")
		if len(got) != 2 || got[1].RevocationId != "g2-gr2" || !got[1].Verified {
			return fmt.Errorf("grant_revoked %v", got)
		}
		return nil
	})
	if a := e.account(t, "gr2"); a.State != connector.StateDisabled {
		t.Fatalf("target account %+v", a)
	}
	// Repeating the decision announces nothing more.
	e.decide(t, eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, "gr2", "g2-gr2")
	time.Sleep(500 * time.Millisecond)
	if got := e.revocations(t, "grant_revoked", "gr2"); len(got) != 2 {
		t.Fatalf("grant_revoked published %d times", len(got))
	}
}
