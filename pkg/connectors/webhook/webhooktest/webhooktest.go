// Package webhooktest is a webhook target for tests: an account system behind a webhook
// endpoint, written the way a target's owner would write one. It verifies the Standard
// Webhooks signature, refuses a replayed webhook-id, and carries each operation out on a
// connectortest.Memory.
package webhooktest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook"
	stdwebhook "github.com/tenure-dev/tenure/pkg/webhook"
)

// Receiver is the target. Its URL is the connector's url; the connector signs with the
// secret Start was given. The server closes when the test ends.
type Receiver struct {
	*httptest.Server
	// Store holds the accounts: the target's own state, for tests to check.
	Store *connectortest.Memory
	keys  [][]byte

	mu       sync.Mutex
	seen     map[string]bool
	override func(op string) (status int, header http.Header)
	requests []webhook.Request
}

// Start serves store behind a webhook endpoint that accepts requests signed with secret.
func Start(t testing.TB, secret string, store *connectortest.Memory) *Receiver {
	t.Helper()
	key, err := stdwebhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{Store: store, keys: [][]byte{key}, seen: map[string]bool{}}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

// Override makes the receiver answer an operation with status (and header) instead of
// carrying it out, for every operation f returns a status for; nil stops overriding.
func (r *Receiver) Override(f func(op string) (status int, header http.Header)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.override = f
}

// Requests returns the signed requests the receiver decoded, in order (a replay included).
func (r *Receiver) Requests() []webhook.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]webhook.Request(nil), r.requests...)
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	v := stdwebhook.Verifier{Keys: r.keys}
	id := req.Header.Get(stdwebhook.HeaderID)
	if _, err := v.Verify(id, req.Header.Get(stdwebhook.HeaderTimestamp), req.Header.Get(stdwebhook.HeaderSignature), body); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var in webhook.Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	replay := r.seen[id]
	r.seen[id] = true
	r.requests = append(r.requests, in)
	override := r.override
	r.mu.Unlock()
	if replay {
		http.Error(w, "replayed webhook-id", http.StatusConflict)
		return
	}
	if override != nil {
		if code, h := override(in.Operation); code != 0 {
			for k, v := range h {
				w.Header()[k] = v
			}
			w.WriteHeader(code)
			fmt.Fprintf(w, "injected %d for %s", code, in.Operation)
			return
		}
	}
	ctx := req.Context()
	var ref connector.AccountRef
	if in.Account != nil {
		ref = connector.AccountRef{ID: in.Account.ID, Username: in.Account.Username}
	}
	var out *webhook.Response
	switch in.Operation {
	case webhook.OpGet:
		var a connector.Account
		if a, err = r.Store.GetAccount(ctx, ref); err == nil {
			acc := webhook.FromAccount(a)
			out = &webhook.Response{Account: &acc}
		}
	case webhook.OpCreate:
		s := in.Spec
		var a connector.Account
		if a, err = r.Store.CreateAccount(ctx, connector.AccountSpec{WorkerID: s.WorkerID, Username: s.Username, Email: s.Email, GivenName: s.GivenName,
			FamilyName: s.FamilyName, DisplayName: s.DisplayName, Entitlements: s.Entitlements}); err == nil {
			acc := webhook.FromAccount(a)
			out = &webhook.Response{Account: &acc}
		}
	case webhook.OpDisable:
		err = r.Store.DisableAccount(ctx, ref)
	case webhook.OpEnable:
		err = r.Store.EnableAccount(ctx, ref)
	case webhook.OpDelete:
		err = r.Store.DeleteAccount(ctx, ref)
	case webhook.OpGrant:
		err = r.Store.GrantEntitlement(ctx, ref, in.Entitlement)
	case webhook.OpRevoke:
		err = r.Store.RevokeEntitlement(ctx, ref, in.Entitlement)
	case webhook.OpRevokeSessions:
		err = r.Store.RevokeSessions(ctx, ref)
	case webhook.OpRevokeCredentials:
		err = r.Store.RevokeCredentials(ctx, ref)
	case webhook.OpList:
		var accts []connector.Account
		var next string
		if accts, next, err = r.Store.ListAccounts(ctx, in.PageToken); err == nil {
			out = &webhook.Response{Accounts: []webhook.Account{}, NextPageToken: next}
			for _, a := range accts {
				out.Accounts = append(out.Accounts, webhook.FromAccount(a))
			}
		}
	default:
		http.Error(w, "unknown operation "+in.Operation, http.StatusNotImplemented)
		return
	}
	switch {
	case errors.Is(err, connector.ErrNotFound):
		http.Error(w, "no such account", http.StatusNotFound)
	case err != nil && connector.KindOf(err) == connector.KindPermanent:
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	case out != nil:
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
