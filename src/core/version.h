/* The version scalegate reports (-v, metrics). */
#ifndef SG_CORE_VERSION_H
#define SG_CORE_VERSION_H

#define SG_VERSION "0.1.0"

#endif
