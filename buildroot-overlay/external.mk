# The baetyl BR2_EXTERNAL tree: its packages (one today, baetyl).
include $(sort $(wildcard $(BR2_EXTERNAL_BAETYL_PATH)/package/*/*.mk))
