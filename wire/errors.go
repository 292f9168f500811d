package wire

import (
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATEs the proxy raises itself.
const (
	CodeProtocolViolation       = "08P01"
	CodeConnectionFailure       = "08006"
	CodeCannotConnectNow        = "57P03"
	CodeInvalidPassword         = "28P01"
	CodeInvalidAuthSpec         = "28000"
	CodeInvalidCatalogName      = "3D000"
	CodeTooManyConnections      = "53300"
	CodeProgramLimitExceeded    = "54000"
	CodeQueryCanceled           = "57014"
	CodeConfigLimitExceeded     = "53400"
	CodeFeatureNotSupported     = "0A000"
	CodeAdminShutdown           = "57P01"
	CodeInternalError           = "XX000"
	CodeDuplicatePreparedStmt   = "42P05"
	CodeInvalidSQLStatementName = "26000"
	CodeSyntaxError             = "42601"
	CodeInvalidParameterValue   = "22023"
	CodeInFailedTransaction     = "25P02"
	CodeNoActiveTransaction     = "25P01"
	CodeActiveTransaction       = "25001"
	CodeTransactionRollback     = "40000"
	CodeSerializationFailure    = "40001"
	CodeLockNotAvailable        = "55P03"
	CodeInvalidTextRepr         = "22P02"
)

// Error is a PostgreSQL error raised by the proxy or relayed from a server.
type Error struct {
	Severity string // ERROR or FATAL
	Code     string
	Message  string
	Detail   string
	Hint     string
	// Fields holds every field of a relayed server error, so the client
	// sees position, schema, constraint, ... exactly as the server sent them.
	Fields *pgproto3.ErrorResponse
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Errorf builds an ERROR with a SQLSTATE.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Severity: "ERROR", Code: code, Message: fmt.Sprintf(format, args...)}
}

// Fatalf builds a FATAL error, after which the connection closes.
func Fatalf(code, format string, args ...any) *Error {
	return &Error{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithHint returns e with a hint.
func (e *Error) WithHint(h string) *Error { e.Hint = h; return e }

// WithDetail returns e with a detail line.
func (e *Error) WithDetail(d string) *Error { e.Detail = d; return e }

// Response renders e as an ErrorResponse message.
func (e *Error) Response() *pgproto3.ErrorResponse {
	if e.Fields != nil {
		return e.Fields
	}
	return &pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
}

// FromServer converts an error from pgconn (for instance a failed
// backend connect) into an Error that keeps the server's SQLSTATE and text.
// Anything else becomes a connection failure naming what was attempted.
func FromServer(err error, what string) *Error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &Error{
			Severity: pe.Severity, Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint,
		}
	}
	var we *Error
	if errors.As(err, &we) {
		return we
	}
	return Errorf(CodeConnectionFailure, "%s: %v", what, err)
}

// IsTimeout reports whether err is a deadline expiry.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
