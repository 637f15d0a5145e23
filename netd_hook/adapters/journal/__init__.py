"""sd_notify, the journal's native protocol, and the audit records.

One place holds an event's data; the human line and journald's structured fields are rendered
from it (`RepairRecord`, `Audit`). Rendering is pure (`repair_audit`, `rollback_audit`, ...,
`encode_entry`); sending is `Journal` (one datagram per entry, or a sealed memfd for a big one)
and `AuditSink` (the journal when there is one, the module logger otherwise).

No python-systemd: the package vendors only pure-Python dependencies, and the native protocol
is small and documented (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).
"""

from __future__ import annotations

from .audit import MAX_SENDERS as MAX_SENDERS
from .audit import MESSAGE_ID_FORGOTTEN_BULK as MESSAGE_ID_FORGOTTEN_BULK
from .audit import MESSAGE_ID_NETWORKD_GENERATION as MESSAGE_ID_NETWORKD_GENERATION
from .audit import MESSAGE_ID_REJECTED_SIGNALS as MESSAGE_ID_REJECTED_SIGNALS
from .audit import MESSAGE_ID_REPAIR as MESSAGE_ID_REPAIR
from .audit import MESSAGE_ID_ROLLBACK as MESSAGE_ID_ROLLBACK
from .audit import MESSAGE_ID_SNAPSHOT_REBUILT as MESSAGE_ID_SNAPSHOT_REBUILT
from .audit import MESSAGE_IDS as MESSAGE_IDS
from .audit import Audit as Audit
from .audit import RejectedBurst as RejectedBurst
from .audit import RejectedSignals as RejectedSignals
from .audit import forgotten_bulk_audit as forgotten_bulk_audit
from .audit import networkd_generation_audit as networkd_generation_audit
from .audit import rejected_signals_audit as rejected_signals_audit
from .audit import repair_audit as repair_audit
from .audit import rollback_audit as rollback_audit
from .audit import snapshot_rebuilt_audit as snapshot_rebuilt_audit
from .native import ALERT as ALERT
from .native import CRIT as CRIT
from .native import DEBUG as DEBUG
from .native import EMERG as EMERG
from .native import ERR as ERR
from .native import IDENTIFIER as IDENTIFIER
from .native import INFO as INFO
from .native import JOURNAL_SOCKET as JOURNAL_SOCKET
from .native import NOTICE as NOTICE
from .native import WARNING as WARNING
from .native import CodeLocation as CodeLocation
from .native import FieldValue as FieldValue
from .native import Journal as Journal
from .native import JournalFieldError as JournalFieldError
from .native import check_field_name as check_field_name
from .native import check_message_id as check_message_id
from .native import check_priority as check_priority
from .native import encode_entry as encode_entry
from .native import entry_items as entry_items
from .notify import Notifier as Notifier
from .notify import RepairRecord as RepairRecord
from .notify import watchdog_interval as watchdog_interval
from .sink import AuditSink as AuditSink
from .sink import log_level as log_level
from .sink import stderr_is_journal as stderr_is_journal
