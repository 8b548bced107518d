// Module entry: each part of the native data path registers its exports here.
#include <node_api.h>

#include "shape.h"
#include "pgmsg.h"
#include "relay.h"
#include "relay_events.h"
#include "seal.h"
#include "durable.h"
#include "statement_event.h"

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"shape", nullptr, shape_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"checkMessage", nullptr, pgmsg_check_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayStart", nullptr, relay_start_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayAdopt", nullptr, relay_adopt_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayWrite", nullptr, relay_write_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayResume", nullptr, relay_resume_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayClose", nullptr, relay_close_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayForget", nullptr, relay_forget_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayPinOthers", nullptr, relay_pin_others_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayStats", nullptr, relay_stats_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sendBatch", nullptr, send_batch_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayEventsRegister", nullptr, relay_events_register_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayEventsForget", nullptr, relay_events_forget_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"relayEventsSeal", nullptr, relay_events_seal_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sealRecord", nullptr, seal_record_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sealAvailable", nullptr, seal_available_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"writeDurable", nullptr, write_durable_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"statementEvent", nullptr, statement_event_js, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
