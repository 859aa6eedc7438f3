/* bit help: `bit help COMMAND` prints what `bit COMMAND --help` prints; `bit help TOPIC`
 * prints a short text on a topic (hyperrule, api, env). */
#ifndef BIT_CMD_HELP_H
#define BIT_CMD_HELP_H

int cmd_help(int argc, char **argv);

#endif
