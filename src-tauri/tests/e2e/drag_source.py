"""A small GTK window that offers one file for dragging, as a file manager would.

Run with the system's Python (it needs PyGObject): `python3 drag_source.py FILE X Y`.
It places itself at X,Y, prints "ready" once shown, and "dropped" when a drag from it ends;
the end-to-end test then drags from it onto the app's window with xdotool, over the real
X drag-and-drop protocol.
"""

import sys

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, Gio, GLib, Gtk  # noqa: E402

path, x, y = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uri = Gio.File.new_for_path(path).get_uri()

window = Gtk.Window(title="smollm3-drag-source")
window.set_default_size(160, 100)
window.move(x, y)
box = Gtk.EventBox()
box.add(Gtk.Label(label="drag me"))
box.drag_source_set(Gdk.ModifierType.BUTTON1_MASK, [], Gdk.DragAction.COPY)
box.drag_source_add_uri_targets()


def give_uri(_widget, _context, data, _info, _time):
    data.set_uris([uri])


def ended(*_args):
    print("dropped", flush=True)


box.connect("drag-data-get", give_uri)
box.connect("drag-end", ended)
window.add(box)
window.connect("destroy", Gtk.main_quit)
window.show_all()
GLib.idle_add(lambda: print("ready", flush=True) and False)
Gtk.main()
