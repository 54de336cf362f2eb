package plugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tenure-dev/tenure/pkg/connector"
	connectorv1 "github.com/tenure-dev/tenure/proto/tenure/connector/v1"
)

// capSet is a set of optional capabilities, one bit each.
type capSet uint16

const (
	capCreate capSet = 1 << iota
	capDisable
	capEnable
	capDelete
	capEntitlements
	capSessions
	capList
	capCredentials

	allCaps = capCreate | capDisable | capEnable | capDelete | capEntitlements | capSessions | capList | capCredentials
)

type capInfo struct {
	bit  capSet
	name string // the SDK's name, connector.Cap*
	pb   connectorv1.Capability
}

// capabilities is the one table tying the SDK's capability names to the wire's.
var capabilities = []capInfo{
	{capCreate, connector.CapCreate, connectorv1.Capability_CAPABILITY_CREATE},
	{capDisable, connector.CapDisable, connectorv1.Capability_CAPABILITY_DISABLE},
	{capEnable, connector.CapEnable, connectorv1.Capability_CAPABILITY_ENABLE},
	{capDelete, connector.CapDelete, connectorv1.Capability_CAPABILITY_DELETE},
	{capEntitlements, connector.CapEntitlements, connectorv1.Capability_CAPABILITY_ENTITLEMENTS},
	{capSessions, connector.CapSessions, connectorv1.Capability_CAPABILITY_SESSIONS},
	{capList, connector.CapList, connectorv1.Capability_CAPABILITY_LIST},
	{capCredentials, connector.CapCredentials, connectorv1.Capability_CAPABILITY_CREDENTIALS},
}

// CapabilityNames returns the optional capability names a client accepts in
// WithCapabilities, in the SDK's order.
func CapabilityNames() []string {
	names := make([]string, len(capabilities))
	for i, c := range capabilities {
		names[i] = c.name
	}
	return names
}

// parseCapabilities turns SDK capability names into a set. "get" is accepted and ignored:
// every connector reads.
func parseCapabilities(names []string) (capSet, error) {
	var set capSet
	for _, n := range names {
		if n == "get" {
			continue
		}
		i := slices.IndexFunc(capabilities, func(c capInfo) bool { return c.name == n })
		if i < 0 {
			return 0, fmt.Errorf("unknown capability %q (known: %s)", n, strings.Join(CapabilityNames(), ", "))
		}
		set |= capabilities[i].bit
	}
	return set, nil
}

// capsOf returns the capabilities c implements.
func capsOf(c connector.Connector) capSet {
	var set capSet
	for _, name := range connector.Capabilities(c) {
		for _, k := range capabilities {
			if k.name == name {
				set |= k.bit
			}
		}
	}
	return set
}

func capsToProto(set capSet) []connectorv1.Capability {
	var out []connectorv1.Capability
	for _, c := range capabilities {
		if set&c.bit != 0 {
			out = append(out, c.pb)
		}
	}
	return out
}

// capsFromProto ignores values it does not know: a newer server may offer capabilities this
// host cannot use yet.
func capsFromProto(pbs []connectorv1.Capability) capSet {
	var set capSet
	for _, p := range pbs {
		for _, c := range capabilities {
			if c.pb == p {
				set |= c.bit
			}
		}
	}
	return set
}

func stateToProto(s connector.AccountState) connectorv1.AccountState {
	switch s {
	case connector.StateEnabled:
		return connectorv1.AccountState_ACCOUNT_STATE_ENABLED
	case connector.StateDisabled:
		return connectorv1.AccountState_ACCOUNT_STATE_DISABLED
	case connector.StateAbsent:
		return connectorv1.AccountState_ACCOUNT_STATE_ABSENT
	default:
		return connectorv1.AccountState_ACCOUNT_STATE_UNSPECIFIED
	}
}

// stateFromProto maps values it does not know to StateUnknown, which the host never takes
// as confirmation.
func stateFromProto(s connectorv1.AccountState) connector.AccountState {
	switch s {
	case connectorv1.AccountState_ACCOUNT_STATE_ENABLED:
		return connector.StateEnabled
	case connectorv1.AccountState_ACCOUNT_STATE_DISABLED:
		return connector.StateDisabled
	case connectorv1.AccountState_ACCOUNT_STATE_ABSENT:
		return connector.StateAbsent
	default:
		return connector.StateUnknown
	}
}

func accountToProto(a connector.Account) *connectorv1.Account {
	return &connectorv1.Account{
		Id:           a.ID,
		Username:     a.Username,
		Email:        a.Email,
		DisplayName:  a.DisplayName,
		State:        stateToProto(a.State),
		Entitlements: a.Entitlements,
	}
}

func accountFromProto(a *connectorv1.Account) connector.Account {
	return connector.Account{
		ID:           a.GetId(),
		Username:     a.GetUsername(),
		Email:        a.GetEmail(),
		DisplayName:  a.GetDisplayName(),
		State:        stateFromProto(a.GetState()),
		Entitlements: a.GetEntitlements(),
	}
}

func refToProto(r connector.AccountRef) *connectorv1.AccountRef {
	return &connectorv1.AccountRef{Id: r.ID, Username: r.Username}
}

func refFromProto(r *connectorv1.AccountRef) connector.AccountRef {
	return connector.AccountRef{ID: r.GetId(), Username: r.GetUsername()}
}

func specToProto(s connector.AccountSpec) *connectorv1.AccountSpec {
	return &connectorv1.AccountSpec{
		WorkerId:     s.WorkerID,
		Username:     s.Username,
		Email:        s.Email,
		GivenName:    s.GivenName,
		FamilyName:   s.FamilyName,
		DisplayName:  s.DisplayName,
		Entitlements: s.Entitlements,
	}
}

func specFromProto(s *connectorv1.AccountSpec) connector.AccountSpec {
	return connector.AccountSpec{
		WorkerID:     s.GetWorkerId(),
		Username:     s.GetUsername(),
		Email:        s.GetEmail(),
		GivenName:    s.GetGivenName(),
		FamilyName:   s.GetFamilyName(),
		DisplayName:  s.GetDisplayName(),
		Entitlements: s.GetEntitlements(),
	}
}

// toStatus turns a connector's error into the status the wire contract (connector.proto)
// gives its kind, so the host's retry policy sees the same kind on the other side.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if errors.Is(err, connector.ErrPending) {
		// UNAVAILABLE keeps a client that does not know the reason retrying, which is safe.
		st := status.New(codes.Unavailable, msg)
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reasonPending, Domain: errorDomain}); err == nil {
			st = withInfo
		}
		return st.Err()
	}
	switch connector.KindOf(err) {
	case connector.KindNotFound:
		return status.Error(codes.NotFound, msg)
	case connector.KindPermanent:
		if errors.Is(err, errors.ErrUnsupported) {
			return status.Error(codes.Unimplemented, msg)
		}
		return status.Error(codes.FailedPrecondition, msg)
	default:
		st := status.New(codes.Unavailable, msg)
		if d := connector.RetryAfterOf(err); d > 0 {
			if withHint, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
				st = withHint
			}
		}
		return st.Err()
	}
}

// fromStatus classifies an error of a call to the remote connector at target. Codes the
// contract calls permanent become Permanent, NOT_FOUND becomes NotFound, a PENDING ErrorInfo
// becomes ErrPending, and everything else is retryable, carrying a RetryInfo delay as the
// Retry-After hint.
func fromStatus(ctx context.Context, target, method string, err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	e := &remoteError{msg: fmt.Sprintf("remote connector %s: %s: %s: %s", target, method, st.Code(), st.Message())}
	switch st.Code() {
	case codes.NotFound:
		return connector.NotFound(e)
	case codes.Unimplemented:
		e.is = connector.ErrUnsupported
		return connector.Permanent(e)
	case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied,
		codes.Unauthenticated, codes.AlreadyExists, codes.OutOfRange:
		return connector.Permanent(e)
	}
	if ctx.Err() != nil {
		// The caller gave up (its deadline or cancellation), not the remote side.
		return connector.Retryable(fmt.Errorf("remote connector %s: %s: %w (%s)", target, method, ctx.Err(), st.Message()))
	}
	if pending(st) {
		// Not retried by the host: a person finishes it, and a later read-back confirms.
		e.is = connector.ErrPending
		return e
	}
	return connector.RetryableAfter(e, retryDelay(st))
}

// The ErrorInfo that marks an operation handed to a person (connector.ErrPending).
const (
	errorDomain   = "connector.tenure.dev"
	reasonPending = "PENDING"
)

func pending(st *status.Status) bool {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == errorDomain && ei.GetReason() == reasonPending {
			return true
		}
	}
	return false
}

// remoteError carries the remote side's words and, for errors.Is, the SDK sentinel its
// status stands for.
type remoteError struct {
	msg string
	is  error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.is }

func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			if d := ri.GetRetryDelay().AsDuration(); d > 0 {
				return d
			}
		}
	}
	return 0
}
