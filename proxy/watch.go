package proxy

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/wire"
)

// serverWatch relays what an idle server says on its own while the
// session waits for its client: NotificationResponse for a LISTENing
// session-pooled client, notices, ParameterStatus, and the FATAL a server
// sends before it goes away.
type serverWatch struct {
	ss       *session
	stopping atomic.Bool
	done     chan struct{}
	err      error
}

// shouldWatch: only a server held across idle periods (session pooling)
// can have anything to say while its client is idle.
func (ss *session) shouldWatch() bool {
	return ss.sc != nil && ss.srv.cfg.Pool.Mode == config.PoolSession &&
		ss.pendingLen() == 0 && !ss.skipToSync && ss.r.Buffered() == 0
}

func (ss *session) startWatch() *serverWatch {
	w := &serverWatch{ss: ss, done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *serverWatch) loop() {
	defer close(w.done)
	ss := w.ss
	sc := ss.sc
	for {
		typ, msg, err := sc.R.Next()
		if err != nil {
			if w.stopping.Load() && wire.IsTimeout(err) {
				return
			}
			w.err = err
			return
		}
		switch typ {
		case 'A', 'N':
		case 'S':
			ss.parameterStatus(msg)
		case 'E':
			// A FATAL before the server closes (admin shutdown, idle timeout).
			w.err = fmt.Errorf("server closed the connection: %s", decodeError(msg).Message)
		default:
			w.err = fmt.Errorf("unexpected message %q from an idle server", typ)
			return
		}
		ss.w.Append(msg)
		if err := ss.w.Flush(); err != nil {
			return // the client is gone; the main loop will notice
		}
		if w.err != nil {
			return
		}
	}
}

// stop ends the watch before the session uses the server again; a non-nil
// error means the server connection is no longer usable.
func (w *serverWatch) stop() error {
	w.stopping.Store(true)
	sc := w.ss.sc
	_ = sc.SetReadDeadline(time.Now().Add(-time.Second))
	<-w.done
	_ = sc.SetReadDeadline(time.Time{})
	return w.err
}
