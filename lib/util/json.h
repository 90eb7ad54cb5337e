/* JSON text of value trees (util/json.c); the pretty form is public. */
#ifndef QIMG_UTIL_JSON_H
#define QIMG_UTIL_JSON_H

struct qimg_value;

/* QEMU's qobject_to_json(): one line; NULL with the message set. */
char *json_compact(const struct qimg_value *v);

#endif
